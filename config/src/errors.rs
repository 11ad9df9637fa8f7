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
