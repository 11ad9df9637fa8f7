//! A message head's fields as a list, in the order they were sent (RFC 9110
//! §5.3): a request's from the client, a response's from the backend.
//!
//! Names and values read from a head are kept as places in its bytes: reading
//! a head hashes nothing and copies nothing, and the fields go on with each
//! name spelled as it came. The few names the proxy asks about are found by
//! a walk over the short list, without regard to case. Fields the proxy
//! writes itself are kept as their own values.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The fields of one head.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// The bytes the places point into (the head as read).
    text: Bytes,
    list: Vec<Field>,
}

#[derive(Debug, Clone)]
struct Field {
    name: Name,
    value: Value,
}

#[derive(Debug, Clone)]
enum Name {
    In(Span),
    Own(HeaderName),
}

#[derive(Debug, Clone)]
enum Value {
    In(Span),
    Own(HeaderValue),
}

/// Where a name or value lies in `text`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(&self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

impl Field {
    fn name<'a>(&'a self, text: &'a [u8]) -> &'a [u8] {
        match &self.name {
            Name::In(span) => &text[span.range()],
            Name::Own(name) => name.as_str().as_bytes(),
        }
    }

    fn value<'a>(&'a self, text: &'a [u8]) -> &'a [u8] {
        match &self.value {
            Value::In(span) => &text[span.range()],
            Value::Own(value) => value.as_bytes(),
        }
    }

    /// The value as one of its own, sharing the head's bytes. A value read
    /// from a head holds no byte a value may not (the parser checked it).
    fn shared_value(&self, text: &Bytes) -> Option<HeaderValue> {
        match &self.value {
            Value::In(span) => HeaderValue::from_maybe_shared(text.slice(span.range())).ok(),
            Value::Own(value) => Some(value.clone()),
        }
    }
}

/// A name or value given as lying in a head's bytes that does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideHead;

/// A field that HTTP/2 cannot carry as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField(pub String);

impl Fields {
    /// No fields yet, room for `capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::read_from(Bytes::new(), capacity)
    }

    /// No fields yet; those read from `text` are added with
    /// [`Self::push_read`].
    pub fn read_from(text: Bytes, capacity: usize) -> Self {
        Self {
            text,
            list: Vec::with_capacity(capacity),
        }
    }

    /// No fields, and no bytes held; the list's memory stays for the next
    /// head unless it grew past [`Self::KEPT`] fields.
    pub fn clear(&mut self) {
        self.text = Bytes::new();
        if self.list.capacity() > Self::KEPT {
            self.list = Vec::new();
        } else {
            self.list.clear();
        }
    }

    /// Most fields whose room [`Self::clear`] keeps: a browser's request
    /// has about 15, and an idle connection should hold little.
    pub const KEPT: usize = 32;

    /// Starts over with the fields of the head in `text` (added with
    /// [`Self::push_read`]), in the list's memory if it has room for
    /// `capacity`.
    pub fn reread_from(&mut self, text: Bytes, capacity: usize) {
        self.clear();
        self.text = text;
        self.list.reserve(capacity);
    }

    /// Adds a field whose name and value are slices of the head's bytes (as
    /// a parser hands them out). The parser has checked them: a name is a
    /// token, a value holds no control bytes but tab.
    pub fn push_read(&mut self, name: &[u8], value: &[u8]) -> Result<(), OutsideHead> {
        let field = Field {
            name: Name::In(self.span(name)?),
            value: Value::In(self.span(value)?),
        };
        self.list.push(field);
        Ok(())
    }

    fn span(&self, part: &[u8]) -> Result<Span, OutsideHead> {
        let base = self.text.as_ptr() as usize;
        let start = (part.as_ptr() as usize)
            .checked_sub(base)
            .ok_or(OutsideHead)?;
        if start + part.len() > self.text.len() {
            return Err(OutsideHead);
        }
        Ok(Span {
            start: u32::try_from(start).map_err(|_| OutsideHead)?,
            len: u32::try_from(part.len()).map_err(|_| OutsideHead)?,
        })
    }

    /// Adds a field of the proxy's own after the others.
    pub fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.list.push(Field {
            name: Name::Own(name),
            value: Value::Own(value),
        });
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every field, in order: its name (as it was spelled) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.list
            .iter()
            .map(|f| (f.name(&self.text), f.value(&self.text)))
    }

    /// The values of every field called `name` (any case), in order.
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of a field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Keeps only the fields `keep` says yes to, given each one's name.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let text = &self.text;
        self.list.retain(|f| keep(f.name(text)));
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &str) {
        self.retain(|n| !n.eq_ignore_ascii_case(name.as_bytes()));
    }

    /// Sets `name` to one `value`: the first field of that name takes it
    /// where it stands and any others go; if there is none it goes last.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        let key = name.as_str().as_bytes();
        let mut found = false;
        let text = &self.text;
        self.list.retain_mut(|f| {
            if !f.name(text).eq_ignore_ascii_case(key) {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            f.value = Value::Own(value.clone());
            true
        });
        if !found {
            self.push(name, value);
        }
    }

    /// The fields of a map (an HTTP/2 request's), in its order.
    pub fn from_map(map: &HeaderMap) -> Self {
        let mut fields = Fields::with_capacity(map.len());
        for (name, value) in map {
            fields.push(name.clone(), value.clone());
        }
        fields
    }

    /// The first value of a field called `name`, as a value of its own
    /// (sharing the head's bytes).
    pub fn get_value(&self, name: &str) -> Option<HeaderValue> {
        self.list
            .iter()
            .find(|f| f.name(&self.text).eq_ignore_ascii_case(name.as_bytes()))?
            .shared_value(&self.text)
    }

    /// The fields as a map (for an HTTP/2 client, whose names are lower
    /// case); the values share the head's bytes.
    pub fn into_map(self) -> Result<HeaderMap, InvalidField> {
        let mut map = HeaderMap::with_capacity(self.list.len());
        for field in &self.list {
            let name = match &field.name {
                Name::Own(name) => name.clone(),
                Name::In(_) => {
                    let name = field.name(&self.text);
                    HeaderName::from_bytes(name).map_err(|_| {
                        InvalidField(format!(
                            "the field name {:?} is invalid",
                            String::from_utf8_lossy(name)
                        ))
                    })?
                }
            };
            let value = field.shared_value(&self.text).ok_or_else(|| {
                InvalidField(format!("the {name} field holds bytes no field may"))
            })?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// Fields read from `name: value` lines, as a backend would send them.
    #[cfg(test)]
    pub(crate) fn parse<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Self {
        let mut lines = Vec::new();
        for (name, value) in pairs {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_ref());
            lines.extend_from_slice(b"\r\n");
        }
        lines.extend_from_slice(b"\r\n");
        let text = Bytes::from(lines);
        let mut parsed = vec![httparse::EMPTY_HEADER; pairs.len()];
        httparse::parse_headers(&text, &mut parsed).expect("valid fields");
        let mut fields = Fields::read_from(text.clone(), pairs.len());
        for h in &parsed {
            fields
                .push_read(h.name.as_bytes(), h.value)
                .expect("in the head");
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_list_keeps_its_memory_but_not_the_head_s_bytes() {
        let head = Bytes::from(b"a: 1\r\nb: 2\r\n".to_vec());
        let mut f = Fields::default();
        f.reread_from(head.clone(), 2);
        f.push_read(&head[..1], &head[3..4]).expect("in the head");
        let room = f.list.capacity();
        assert!(room >= 2);
        f.clear();
        assert!(f.is_empty());
        assert_eq!(f.list.capacity(), room, "the list's memory stays");
        assert!(head.is_unique(), "the head's bytes are let go");
        f.reread_from(head.clone(), 2);
        f.push_read(&head[6..7], &head[9..10]).expect("in the head");
        assert_eq!(f.iter().collect::<Vec<_>>(), [(&b"b"[..], &b"2"[..])]);
        // A list grown past what an idle connection should hold goes.
        f.reread_from(head.clone(), Fields::KEPT + 1);
        f.clear();
        assert_eq!(f.list.capacity(), 0);
    }
    use http::header;
    use proptest::prelude::*;

    fn names(fields: &Fields) -> Vec<String> {
        fields
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn read_fields_keep_their_order_and_spelling() {
        let fields = Fields::parse(&[("Server", "x"), ("X-A", "1"), ("x-a", "2")]);
        assert_eq!(names(&fields), ["Server=x", "X-A=1", "x-a=2"]);
        assert_eq!(fields.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(fields.get("server"), Some(&b"x"[..]));
        assert!(!fields.contains("x-b"));
    }

    #[test]
    fn a_slice_from_elsewhere_is_refused() {
        let mut fields = Fields::read_from(Bytes::from_static(b"a: b\r\n"), 1);
        let other = b"a: b\r\n".to_vec();
        assert_eq!(
            fields.push_read(&other[..1], &other[3..4]),
            Err(OutsideHead)
        );
        assert!(fields.is_empty());
    }

    #[test]
    fn insert_takes_the_first_place_and_drops_the_rest() {
        let mut fields = Fields::parse(&[("A", "1"), ("Content-Length", "3"), ("B", "2")]);
        fields.push(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        fields.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(names(&fields), ["A=1", "Content-Length=5", "B=2"]);
        fields.insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(
            names(&fields).last().map(String::as_str),
            Some("connection=close")
        );
    }

    #[test]
    fn the_map_has_lower_case_names_and_every_value() {
        let mut fields = Fields::parse(&[("X-A", "1"), ("x-a", "2")]);
        fields.push(header::SERVER, HeaderValue::from_static("s"));
        let map = fields.into_map().expect("valid");
        assert_eq!(map.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(map["server"], "s");
        assert_eq!(map.len(), 3);
    }

    proptest! {
        /// `remove` leaves exactly the fields of other names, in order,
        /// whatever their case.
        #[test]
        fn remove_keeps_every_other_field(
            picks in proptest::collection::vec((0usize..4, any::<bool>()), 0..12),
            gone in 0usize..4,
        ) {
            const NAMES: [&str; 4] = ["a", "b-b", "content-length", "x"];
            let upper = |n: &str, up: bool| if up { n.to_ascii_uppercase() } else { n.to_owned() };
            let owned: Vec<(String, String)> = picks
                .iter()
                .enumerate()
                .map(|(i, (n, up))| (upper(NAMES[*n], *up), i.to_string()))
                .collect();
            let pairs: Vec<(&str, &str)> =
                owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let mut fields = Fields::parse(&pairs);
            fields.remove(NAMES[gone]);
            let want: Vec<String> = owned
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case(NAMES[gone]))
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            prop_assert_eq!(names(&fields), want);
        }
    }
}
