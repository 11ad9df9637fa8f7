//! Parsers for the scalar values a config file holds as strings (durations,
//! sizes, addresses, methods), each recording a field error instead of failing.

use crate::errors::FieldErrors;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A path from a config file: relative paths are taken from `base`, the
/// file's folder.
pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The longest duration a field takes: longer is taken for a typo, and
/// every deadline built from a field stays within the clock's range.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The shortest period of a loop the config sets (probes, file watches,
/// polls, reports): shorter would keep a core busy for nothing.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// `"10s"`, `"250ms"`, `"1m 30s"`: humantime syntax, at most
/// [`MAX_DURATION`].
pub(crate) fn duration(errs: &mut FieldErrors, path: &str, raw: &str) -> Duration {
    match humantime::parse_duration(raw) {
        Ok(d) if d > MAX_DURATION => {
            errs.push(
                path,
                format!("must be at most 10 years (\"87600h\"), got {raw:?}"),
            );
            Duration::ZERO
        }
        Ok(d) => d,
        Err(_) => {
            errs.push(
                path,
                format!("must be a duration such as \"10s\" or \"250ms\", got {raw:?}"),
            );
            Duration::ZERO
        }
    }
}

/// A duration of at least a millisecond: a shorter wait ends before
/// anything it waits for could come.
pub(crate) fn positive_duration(errs: &mut FieldErrors, path: &str, raw: &str) -> Duration {
    at_least(errs, path, raw, Duration::from_millis(1), "")
}

/// How often a loop runs: at least [`MIN_PERIOD`].
pub(crate) fn period(errs: &mut FieldErrors, path: &str, raw: &str) -> Duration {
    at_least(errs, path, raw, MIN_PERIOD, "")
}

/// A duration of at least `min`; `why` ends the error.
pub(crate) fn at_least(
    errs: &mut FieldErrors,
    path: &str,
    raw: &str,
    min: Duration,
    why: &str,
) -> Duration {
    let before = errs.len();
    let d = duration(errs, path, raw);
    if errs.len() == before && d < min {
        errs.push(
            path,
            format!(
                "must be at least {}{why}, got {raw:?}",
                humantime::format_duration(min)
            ),
        );
        return Duration::ZERO;
    }
    d
}

/// An optional bound on connections: at least 1; left out, the server
/// does what `left_out` says ("take it from the open-file limit").
pub(crate) fn connection_bound(
    errs: &mut FieldErrors,
    path: &str,
    raw: Option<u64>,
    left_out: &str,
) -> Option<usize> {
    match raw {
        Some(0) => {
            errs.push(
                path,
                format!("must be at least 1 (leave it out to {left_out})"),
            );
            None
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    }
}

/// `"10MiB"`, `"512KB"`, `"1048576"`.
pub(crate) fn size(errs: &mut FieldErrors, path: &str, raw: &str) -> u64 {
    match raw.trim().parse::<bytesize::ByteSize>() {
        // The parser saturates: a size past 16 EiB reads as the largest.
        Ok(b) if b.as_u64() == u64::MAX => too_large(errs, path, raw, ""),
        Ok(b) => b.as_u64(),
        Err(e) => {
            errs.push(
                path,
                format!("must be a size such as \"10MiB\" or \"512KB\", got {raw:?} ({e})"),
            );
            0
        }
    }
}

/// Says that `raw` is past what a size (`per` `""`) or rate (`"/s"`)
/// holds; 0 stands in for it.
fn too_large(errs: &mut FieldErrors, path: &str, raw: &str, per: &str) -> u64 {
    errs.push(path, format!("must be at most 16EiB{per}, got {raw:?}"));
    0
}

/// `"1KiB/s"`, `"500B/s"`: a size per second, in bytes.
pub(crate) fn rate(errs: &mut FieldErrors, path: &str, raw: &str) -> u64 {
    let parsed = raw
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| "no \"/s\" at its end".to_string())
        .and_then(|size| size.trim().parse::<bytesize::ByteSize>());
    match parsed {
        // A fraction of a byte a second reads as 0, which turns a rate off.
        Ok(b) if b.as_u64() == 0 && raw.bytes().any(|c| (b'1'..=b'9').contains(&c)) => {
            errs.push(
                path,
                format!("must be at least 1B/s (or \"0B/s\" to turn it off), got {raw:?}"),
            );
            0
        }
        Ok(b) if b.as_u64() == u64::MAX => too_large(errs, path, raw, "/s"),
        Ok(b) => b.as_u64(),
        Err(e) => {
            errs.push(
                path,
                format!(
                    "must be a size per second such as \"1KiB/s\" or \"500B/s\", got {raw:?} ({e})"
                ),
            );
            0
        }
    }
}

/// A literal `ip:port` socket address to listen on (or to reach), with a
/// port: port 0 would bind one the system picks and no one else knows.
pub(crate) fn listen_addr(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            errs.push(
                path,
                format!("must name a port (1-65535), got {raw:?} (port 0)"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            // An address whose port alone is wrong says so.
            let port_out_of_range = raw.rsplit_once(':').is_some_and(|(ip, port)| {
                ip.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok()
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    // An IPv6 address without brackets reads as one with a
                    // port; only a number past 65535 is a port out of range.
                    && port.parse::<u64>().map_or(true, |p| p > 65_535)
            });
            let why = if port_out_of_range {
                format!("must name a port from 1 to 65535, got {raw:?}")
            } else {
                format!("must be an ip:port address such as \"0.0.0.0:8080\", got {raw:?}")
            };
            errs.push(path, why);
            None
        }
    }
}

/// Whether two listening addresses take the same port on some address: the
/// same address, or a wildcard of the same family, or the IPv6 wildcard,
/// which takes IPv4 too on a dual-stack host.
pub(crate) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
            || [a, b]
                .iter()
                .any(|x| x.is_ipv6() && x.ip().is_unspecified()))
}

/// A `host:port` pair where host is a DNS name or an IP literal (IPv6 in brackets).
pub(crate) fn host_port(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<(String, u16)> {
    let bad = |errs: &mut FieldErrors, why: &str| {
        errs.push(
            path,
            format!("must be host:port such as \"10.0.1.5:8080\" or \"alb.example.com:443\", got {raw:?} ({why})"),
        );
        None
    };
    if let Ok(sa) = raw.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return bad(errs, "port 0");
        }
        return Some((sa.ip().to_string(), sa.port()));
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return bad(errs, "no port");
    };
    let Some(port) = port_number(port) else {
        return bad(errs, "port must be 1-65535");
    };
    if !valid_dns_name(host) {
        return bad(errs, "host is not a valid DNS name or IP address");
    }
    Some((host.to_ascii_lowercase(), port))
}

/// A DNS name as TLS clients take one (letters, digits, '_' and '-' in
/// labels of 1 to 63 bytes, at most 253 in all, one trailing dot allowed).
/// A name whose last label is all digits is no name: it is an IPv4
/// address gone wrong (`999.1.1.1`, `127.0.0.01`).
pub(crate) fn valid_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

/// A host to connect to outside brackets: a DNS name (see
/// [`valid_dns_name`]) or an IPv4 address.
fn name_or_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok() || valid_dns_name(host)
}

/// The name a TLS client sends (SNI) and checks the certificate for: a
/// DNS name (without the trailing dot SNI leaves out) or an IP address.
pub(crate) fn server_name(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<String> {
    if name_or_ipv4(raw) || raw.parse::<std::net::Ipv6Addr>().is_ok() {
        Some(raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase())
    } else {
        errs.push(
            path,
            format!(
                "must be a DNS name such as \"api.example.com\" (or an IP address), got {raw:?}"
            ),
        );
        None
    }
}

/// An `http://` or `https://` URL whose host is a DNS name or an IP
/// address (IPv6 in brackets), with an optional port and user
/// information, and whose path and query are visible ASCII
/// (percent-encode the rest).
pub(crate) fn http_url(raw: &str) -> bool {
    let Some(rest) = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
    else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(user, host)| {
            if user.bytes().all(|b| b.is_ascii_graphic()) {
                host
            } else {
                ""
            }
        });
    host_and_port(host) && tail.bytes().all(|b| b.is_ascii_graphic())
}

/// `host` or `host:port` (1-65535), the host a DNS name, an IPv4 address
/// or a bracketed IPv6 address: an [`authority`] a client can connect to.
pub(crate) fn host_and_port(raw: &str) -> bool {
    authority_with(raw, name_or_ipv4)
}

/// A `Host` field value (RFC 9110 §7.2): a host name as RFC 3986 allows one
/// (letters, digits and `-._~!$&'()*+,;=%`), an IPv4 address or a bracketed
/// IPv6 address, each with an optional port.
pub(crate) fn host_header(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<String> {
    if authority(raw) {
        Some(raw.to_ascii_lowercase())
    } else {
        errs.push(
            path,
            format!(
                "must be a Host value such as \"api.example.com\", \"api.example.com:8443\" or \"[2001:db8::1]\", got {raw:?}"
            ),
        );
        None
    }
}

/// Reads a file that must be a regular file of at most `limit` bytes, so
/// that a path to a pipe or a device (even one swapped in for a moment)
/// cannot hang or exhaust the reader: it is opened without blocking, then
/// asked what it is. `hint` ends the "too large" error (what such a file
/// usually weighs).
pub fn read_regular(path: &std::path::Path, limit: u64, hint: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {limit} bytes; {hint}"),
        ));
    }
    Ok(bytes)
}

/// Why `path` is no regular file, if it is not: "not found", "a
/// directory", or "not a regular file" (a pipe, a device, a socket).
pub(crate) fn not_a_file(path: &std::path::Path) -> Option<&'static str> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) if m.is_dir() => Some("a directory"),
        Ok(_) => Some("not a regular file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("not found"),
        Err(_) => Some("cannot be read"),
    }
}

/// Why the file a config names as `raw` (relative to `base`) is no regular
/// file, if it is not: as [`not_a_file`], or "no file named" for an empty
/// value (which would name the config's own folder).
pub(crate) fn not_a_named_file(base: &Path, raw: &str) -> Option<&'static str> {
    if raw.trim().is_empty() {
        return Some("no file named");
    }
    not_a_file(&resolve(base, raw))
}

/// The most a config file may hold: a config takes a few KiB.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// A request target's path as written on a request line: starting with
/// '/', visible ASCII (spaces and the rest percent-encoded), no fragment,
/// and a query only when `query`.
pub(crate) fn request_path(raw: &str, query: bool) -> bool {
    raw.starts_with('/')
        && raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'#' && (query || b != b'?'))
}

/// A config file's text: at most [`MAX_CONFIG_BYTES`], and UTF-8, with
/// the offset of the first byte that is not. A pipe is read to its end
/// (`--config <(...)` works); a device such as `/dev/zero` stops at the
/// limit.
pub(crate) fn read_config_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_BYTES} bytes; a config file takes a few KiB"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        Error::new(
            ErrorKind::InvalidData,
            format!("not UTF-8 text: line {line} (byte {at}) is not; save the file as UTF-8"),
        )
    })
}

/// The folder a config file's relative paths are taken from: the file's
/// own, or the working directory for a config read from a pipe (as in
/// `--config <(...)`, whose path is in `/dev/fd`, where no file of the
/// config's is).
pub(crate) fn config_base(path: &std::path::Path) -> std::path::PathBuf {
    let piped = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    match path.parent() {
        Some(folder) if !piped => folder.to_owned(),
        _ => std::path::PathBuf::from("."),
    }
}

/// An HTTP token (RFC 9110 §5.6.2), as field names and cookie names are;
/// not empty.
pub fn token(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 3986's authority without user information: a host name, an IPv4
/// address or a bracketed IPv6 address, with an optional port (1-65535).
pub fn authority(raw: &str) -> bool {
    authority_with(raw, reg_name)
}

/// An authority whose host, when not a bracketed IPv6 address, `host_ok`
/// takes, with an optional port (1-65535).
fn authority_with(raw: &str, host_ok: fn(&str) -> bool) -> bool {
    let port = |p: &str| port_number(p).is_some();
    match raw.strip_prefix('[') {
        Some(rest) => rest.split_once(']').is_some_and(|(v6, tail)| {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
                && (tail.is_empty() || tail.strip_prefix(':').is_some_and(port))
        }),
        None => match raw.rsplit_once(':') {
            Some((host, p)) => host_ok(host) && port(p),
            None => host_ok(raw),
        },
    }
}

/// A port written in digits alone (Rust's parser takes a leading `+`,
/// which servers and caches read differently), 1-65535.
fn port_number(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

/// RFC 3986's reg-name, which covers IPv4 addresses too; not empty.
fn reg_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

/// An HTTP method token, upper-cased.
pub(crate) fn method(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
    if ok {
        Some(raw.to_ascii_uppercase())
    } else {
        errs.push(
            path,
            format!("must be an HTTP method such as \"GET\" or \"POST\", got {raw:?}"),
        );
        None
    }
}

/// `"text"` or `"json"`.
pub(crate) fn log_format(errs: &mut FieldErrors, path: &str, raw: &str) -> crate::LogFormat {
    match raw {
        "text" => crate::LogFormat::Text,
        "json" => crate::LogFormat::Json,
        other => {
            errs.push(path, format!("must be \"text\" or \"json\", got {other:?}"));
            crate::LogFormat::Text
        }
    }
}

/// The length of a document's region list: at least one, at most
/// `MAX_REGIONS`. False when there are too many to check one by one.
pub(crate) fn region_count(errs: &mut FieldErrors, n: usize) -> bool {
    if n == 0 {
        errs.push("regions", "at least one region is required, got none");
    }
    if n > crate::MAX_REGIONS {
        errs.push(
            "regions",
            format!(
                "at most {} regions are supported, got {n}",
                crate::MAX_REGIONS
            ),
        );
        return false;
    }
    true
}

/// One region of a table or topology document: a valid name not seen
/// before in `names`, and a Route 53 weight (0-255).
pub(crate) fn region_entry<'a>(
    errs: &mut FieldErrors,
    i: usize,
    name: &'a str,
    weight: Option<u32>,
    names: &mut std::collections::HashSet<&'a str>,
) {
    if !crate::proxy::valid_region_name(name) {
        errs.push(
            format!("regions[{i}].name"),
            format!("must be a region name such as \"eu-west-1\", got {name:?}"),
        );
    } else if !names.insert(name) {
        errs.push(
            format!("regions[{i}].name"),
            format!("{name:?} is listed twice"),
        );
    }
    if let Some(w) = weight.filter(|w| *w > 255) {
        errs.push(
            format!("regions[{i}].weight"),
            format!("must be 0-255, got {w}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_whose_port_is_out_of_range_says_so() {
        let mut e = FieldErrors::default();
        assert_eq!(
            listen_addr(&mut e, "admin.address", "127.0.0.1:70000"),
            None
        );
        assert_eq!(listen_addr(&mut e, "admin.address", "[::1]:99999"), None);
        assert_eq!(listen_addr(&mut e, "admin.address", "localhost:80"), None);
        assert_eq!(
            listen_addr(&mut e, "admin.address", "2001:db8::1:8080"),
            None
        );
        let said: Vec<String> = e.iter().map(|e| e.message.clone()).collect();
        assert!(said[0].contains("a port from 1 to 65535"), "{said:?}");
        assert!(said[1].contains("a port from 1 to 65535"), "{said:?}");
        assert!(said[2].contains("must be an ip:port address"), "{said:?}");
        assert!(said[3].contains("must be an ip:port address"), "{said:?}");
    }

    #[test]
    fn host_header_takes_names_addresses_and_ports() {
        let mut e = FieldErrors::default();
        for ok in [
            "api.example.com",
            "api.example.com.",
            "my_service.internal:8080",
            "API.example.com:8443",
            "10.0.0.1",
            "[2001:db8::1]",
            "[::1]:80",
        ] {
            assert!(host_header(&mut e, "x", ok).is_some(), "{ok}");
        }
        assert!(e.is_empty());
        for bad in [
            "",
            "a b",
            "x\r\ny: 1",
            "user@host",
            "host:0",
            "host:",
            "::1",
            "[::1",
            "[x]:80",
            "h/p",
        ] {
            let mut e = FieldErrors::default();
            assert!(
                host_header(&mut e, "regions[0].host", bad).is_none(),
                "{bad:?}"
            );
            assert!(e.to_string().contains("regions[0].host"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn host_port_accepts_names_and_literals() {
        let mut e = FieldErrors::default();
        assert_eq!(
            host_port(&mut e, "x", "alb-1.eu-west-1.elb.amazonaws.com:443"),
            Some(("alb-1.eu-west-1.elb.amazonaws.com".into(), 443))
        );
        assert_eq!(host_port(&mut e, "x", "[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(
            host_port(&mut e, "x", "127.0.0.1:8080"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert!(e.is_empty());
    }

    #[test]
    fn host_port_rejects_garbage_with_the_value() {
        for raw in [
            "",
            "host",
            "host:0",
            "host:99999",
            "host:+80",
            ":80",
            "bad_host!:80",
            "-a.com:1",
        ] {
            let mut e = FieldErrors::default();
            assert_eq!(
                host_port(&mut e, "regions[0].backends[1]", raw),
                None,
                "{raw}"
            );
            let msg = e.to_string();
            assert!(msg.starts_with("regions[0].backends[1]: "), "{msg}");
            assert!(msg.contains(&format!("{raw:?}")), "{msg}");
        }
    }

    #[test]
    fn values_that_cannot_work_as_meant_are_refused() {
        let mut e = FieldErrors::default();
        positive_duration(&mut e, "timeouts.connect", "1ns");
        positive_duration(&mut e, "timeouts.read", "0s");
        size(&mut e, "limits.max_request_body", "100000PiB");
        rate(&mut e, "limits.min_request_body_rate", "0.5B/s");
        let said = e.to_string();
        assert_eq!(e.len(), 4, "{said}");
        assert!(
            said.contains("timeouts.connect: must be at least 1ms, got \"1ns\""),
            "{said}"
        );
        assert!(
            said.contains("timeouts.read: must be at least 1ms, got \"0s\""),
            "{said}"
        );
        assert!(
            said.contains("must be at most 16EiB, got \"100000PiB\""),
            "{said}"
        );
        assert!(
            said.contains("must be at least 1B/s (or \"0B/s\" to turn it off)"),
            "{said}"
        );
        let mut e = FieldErrors::default();
        assert_eq!(
            positive_duration(&mut e, "t", "1ms"),
            Duration::from_millis(1)
        );
        assert_eq!(rate(&mut e, "r", "0B/s"), 0);
        assert_eq!(rate(&mut e, "r", "1.5KiB/s"), 1536);
        assert!(e.is_empty(), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        let mut e = FieldErrors::default();
        assert_eq!(duration(&mut e, "t", "250ms"), Duration::from_millis(250));
        assert_eq!(size(&mut e, "s", "1KiB"), 1024);
        assert!(e.is_empty());
        positive_duration(&mut e, "t", "0s");
        duration(&mut e, "u", "ten seconds");
        size(&mut e, "v", "lots");
        assert_eq!(e.len(), 3, "{e}");
    }

    #[test]
    fn durations_stay_within_ten_years_and_periods_above_ten_milliseconds() {
        let mut e = FieldErrors::default();
        assert_eq!(duration(&mut e, "t", "87600h"), MAX_DURATION);
        assert_eq!(period(&mut e, "p", "10ms"), MIN_PERIOD);
        assert!(e.is_empty(), "{e}");
        for huge in ["87601h", "4000000000000000h", "18446744073709551615s"] {
            let mut e = FieldErrors::default();
            assert_eq!(duration(&mut e, "timeouts.connect", huge), Duration::ZERO);
            assert!(
                e.to_string()
                    .contains("timeouts.connect: must be at most 10 years"),
                "{huge}: {e}"
            );
        }
        for tiny in ["1ns", "9ms"] {
            let mut e = FieldErrors::default();
            period(&mut e, "health.interval", tiny);
            assert!(
                e.to_string()
                    .contains("health.interval: must be at least 10ms"),
                "{tiny}: {e}"
            );
        }
        let mut e = FieldErrors::default();
        period(&mut e, "p", "0s");
        assert_eq!(e.len(), 1, "one error for zero, not two: {e}");
        let mut e = FieldErrors::default();
        let min = Duration::from_millis(100);
        assert_eq!(at_least(&mut e, "dns.min_ttl", "100ms", min, ""), min);
        assert_eq!(
            at_least(&mut e, "dns.min_ttl", "50ms", min, " (why)"),
            Duration::ZERO
        );
        assert_eq!(
            e.to_string().trim(),
            "dns.min_ttl: must be at least 100ms (why), got \"50ms\""
        );
    }

    #[test]
    fn a_path_that_is_no_file_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t").unwrap();
        assert_eq!(not_a_file(&file), None);
        assert_eq!(not_a_file(dir.path()), Some("a directory"));
        assert_eq!(not_a_file(&dir.path().join("none")), Some("not found"));
        // An empty value would name the config's own folder.
        assert_eq!(not_a_named_file(dir.path(), ""), Some("no file named"));
        assert_eq!(not_a_named_file(dir.path(), "none"), Some("not found"));
        let fifo = crate::fifo(dir.path(), "fifo");
        assert_eq!(not_a_file(&fifo), Some("not a regular file"));
    }

    #[test]
    fn a_config_file_is_utf8_of_at_most_4_mib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        assert_eq!(read_config_text(&path).unwrap(), "a = 1\n");
        std::fs::write(&path, b"a = 1\nb = \"\xff\"\n").unwrap();
        let e = read_config_text(&path).unwrap_err().to_string();
        assert!(e.contains("not UTF-8 text: line 2 (byte 11)"), "{e}");
        std::fs::write(&path, vec![b'#'; 4 * 1024 * 1024 + 1]).unwrap();
        let e = read_config_text(&path).unwrap_err().to_string();
        assert!(e.contains("larger than 4194304 bytes"), "{e}");
        let e = read_config_text(&dir.path().join("none")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn hosts_urls_and_server_names_are_what_a_client_can_connect_to() {
        for ok in [
            "api.example.com",
            "api.example.com:8443",
            "10.0.0.1:80",
            "[2001:db8::1]:443",
            "[::1]",
            "edgeroute-control",
            "edgeroute_control:9080",
            "api.example.com.:443",
            "a1.b2",
        ] {
            assert!(host_and_port(ok), "{ok}");
        }
        for bad in [
            "",
            "a%zz",
            "a'b",
            "a=b",
            "a;b",
            "999.1.1.1",
            "127.0.0.01",
            "host:0",
            "host:",
            "[::1",
            "::1",
            "-a.com",
            "a..b",
            "host:99999",
            "host:+80",
            "[::1]:+443",
        ] {
            assert!(!host_and_port(bad), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:5000",
            "https://hooks.example.com/edgeroute?key=a%20b",
            "http://[::1]:9080/",
            "https://user:p%40ss@hooks.example.com/x",
        ] {
            assert!(http_url(ok), "{ok}");
        }
        for bad in [
            "http://",
            "https://exa mple.com/",
            "https://hooks.example.com/a b",
            "ftp://x",
            "hooks.example.com",
            "http://a%zz:19080",
            "http://user@",
        ] {
            assert!(!http_url(bad), "{bad}");
        }
        let mut e = FieldErrors::default();
        assert_eq!(
            server_name(&mut e, "regions[0].sni", "API.example.com").as_deref(),
            Some("api.example.com")
        );
        assert!(server_name(&mut e, "s", "10.0.0.1").is_some());
        assert_eq!(
            server_name(&mut e, "s", "api.example.com.").as_deref(),
            Some("api.example.com"),
            "SNI leaves the trailing dot out"
        );
        assert!(server_name(&mut e, "s", "_svc.example.com").is_some());
        assert!(server_name(&mut e, "s", "2001:db8::1").is_some());
        assert!(e.is_empty(), "{e}");
        for bad in ["", "not a name/../", "999.1.1.1"] {
            let mut e = FieldErrors::default();
            assert!(server_name(&mut e, "regions[0].sni", bad).is_none());
            assert!(
                e.to_string().contains("regions[0].sni: must be a DNS name"),
                "{e}"
            );
        }
    }

    #[test]
    fn listening_addresses_need_a_port_and_overlap_through_wildcards() {
        let mut e = FieldErrors::default();
        assert!(listen_addr(&mut e, "admin.address", "127.0.0.1:0").is_none());
        assert!(e.to_string().contains("(port 0)"), "{e}");
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (x, y) in [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("10.0.0.1:80", "0.0.0.0:80"),
            ("[::]:80", "127.0.0.1:80"),
            ("[::]:80", "[::1]:80"),
        ] {
            assert!(overlap(a(x), a(y)) && overlap(a(y), a(x)), "{x} {y}");
        }
        for (x, y) in [
            ("127.0.0.1:80", "127.0.0.1:81"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("0.0.0.0:80", "[::1]:80"),
            ("0.0.0.0:80", "0.0.0.0:81"),
        ] {
            assert!(!overlap(a(x), a(y)) && !overlap(a(y), a(x)), "{x} {y}");
        }
    }
}
