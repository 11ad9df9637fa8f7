//! Validation errors that name the field, its value and what is expected.

use std::fmt;

/// One problem in an input document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the problem is, e.g. `regions[1].backends[0]`.
    pub path: String,
    /// What is wrong and what would be accepted, including the value found.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one document; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was reported, else every error.
    pub(crate) fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, FieldErrors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// The most errors one message lists; a document wrong everywhere gets a
/// message of bounded size (a log line, not megabytes).
const SHOWN: usize = 20;

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "\n(and {} more)", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
mod tests {
    use super::FieldErrors;

    #[test]
    fn a_message_lists_twenty_errors_and_counts_the_rest() {
        let mut e = FieldErrors::default();
        for i in 0..25 {
            e.push(format!("regions[{i}]"), "bad");
        }
        let text = e.to_string();
        assert_eq!(text.lines().count(), 21, "{text}");
        assert!(text.contains("regions[19]: bad") && !text.contains("regions[20]"));
        assert!(text.ends_with("(and 5 more)"), "{text}");
    }
}

/// An error and every cause below it, joined with ": " (an HTTP client's
/// "client error (Connect)" alone does not say that the connection was
/// refused, or the name not found). A cause already quoted by the error
/// above it is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn every_cause_is_named_once() {
        let e = Layer(
            "client error (Connect)",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            super::error_chain(&e),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
        let quoted = Layer(
            "read failed: timed out",
            Some(Box::new(Layer("timed out", None))),
        );
        assert_eq!(super::error_chain(&quoted), "read failed: timed out");
    }
}
