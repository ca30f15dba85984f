//! Request-path normalization: one canonical spelling of a path, computed once per request,
//! before authorization and routing, and forwarded to the app.
//!
//! Without it, a deny on `/admin` is side-stepped by `/./admin`, `//admin` or `/%61dmin`, the
//! class of Istio's CVE-2021-31920 and CVE-2021-39156. The rules follow what Istio settled on
//! (`normalize_path: true`, `merge_slashes: true`, `path_with_escaped_slashes_action`):
//!
//! 1. the path must be in origin form (start with `/`), or be `*` (OPTIONS), which passes as is;
//! 2. every `%` must be followed by two hex digits, else the request is refused;
//! 3. escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes keep
//!    their encoding with upper-case hex digits (`%2f` → `%2F`);
//! 4. `%2F`, `%5C` and a raw `\` are refused unless the mesh keeps them (left as they are) or
//!    decodes them (to `/`, which then splits segments);
//! 5. repeated slashes are merged and dot segments (`.`, `..`) removed (RFC 3986 §5.2.4); `..`
//!    never climbs above the root; a trailing slash is kept.
//!
//! The query string is not part of the path: callers split it off first.

use std::borrow::Cow;

use serde::Deserialize;

/// What to do with an escaped slash or backslash (`%2F`, `%5C`) or a raw backslash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EscapedSlashes {
    /// Refuse the request (400): the safe default, since apps disagree on what they mean.
    #[default]
    Reject,
    /// Leave them as they are: for apps that use `%2F` inside one segment (object keys).
    Keep,
    /// Decode them to `/` before segments are merged and dot segments removed.
    Decode,
}

impl EscapedSlashes {
    /// Parses the spelling used by the intent (`reject`, `keep`, `decode`) or ProxyConfig's.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "REJECT" => Some(Self::Reject),
            "KEEP" => Some(Self::Keep),
            "DECODE" => Some(Self::Decode),
            _ => None,
        }
    }
}

/// Why a path has no normal form; the 400 a client gets names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not in origin form (must start with '/')")]
    NotOriginForm,
    #[error("malformed percent-encoding at byte {at}")]
    MalformedEscape { at: usize },
    #[error("escaped slash or backslash (%2F, %5C) is not allowed")]
    EscapedSlash,
    #[error("backslash is not allowed")]
    Backslash,
    #[error("path contains bytes that are not valid UTF-8 once decoded")]
    Unrepresentable,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True if the path needs no work: no escapes, backslashes, empty or dot segments. Most
/// requests take this branch and allocate nothing.
fn already_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.iter().any(|&c| c == b'%' || c == b'\\') {
        return false;
    }
    // Segments between slashes; the first is the empty string before the leading '/'.
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normal form of `path` (no query string), or why there is none.
pub fn normalize(path: &str, escaped: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if path == "*" || already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    // Pass 1: decode what may be decoded, canonicalise the rest, police slashes.
    let b = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::MalformedEscape { at: i });
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => match escaped {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => {
                            decoded.extend_from_slice(if byte == b'/' { b"%2F" } else { b"%5C" })
                        }
                        EscapedSlashes::Decode => decoded.push(b'/'),
                    },
                    c if is_unreserved(c) => decoded.push(c),
                    c => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[(c >> 4) as usize],
                            HEX[(c & 15) as usize],
                        ]);
                    }
                }
                i += 3;
            }
            b'\\' => {
                match escaped {
                    EscapedSlashes::Reject => return Err(PathError::Backslash),
                    // A raw backslash is not a valid path character; keep it escaped so the
                    // app sees what was authorized.
                    EscapedSlashes::Keep => decoded.extend_from_slice(b"%5C"),
                    EscapedSlashes::Decode => decoded.push(b'/'),
                }
                i += 1;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    // Only unreserved ASCII was decoded, so the bytes are as valid UTF-8 as the input was.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::Unrepresentable)?;
    // Pass 2: merge slashes and remove dot segments.
    let trailing = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    // A trailing slash (or a trailing dot segment, which names a directory) is kept.
    let last = decoded.rsplit('/').next().unwrap_or("");
    if out.is_empty() || trailing || last == "." || last == ".." {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c~d", "*"] {
            assert!(
                matches!(normalize(p, EscapedSlashes::Reject), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/../b").unwrap(), "/b");
        assert_eq!(n("/../../admin").unwrap(), "/admin");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
    }

    #[test]
    fn escapes() {
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/%7e").unwrap(), "/~");
        assert_eq!(n("/a%"), Err(PathError::MalformedEscape { at: 2 }));
        assert_eq!(n("/a%4"), Err(PathError::MalformedEscape { at: 2 }));
        assert_eq!(n("/a%zz"), Err(PathError::MalformedEscape { at: 2 }));
    }

    #[test]
    fn slashes_by_setting() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EscapedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EscapedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        let keep = |p| normalize(p, EscapedSlashes::Keep).unwrap().into_owned();
        assert_eq!(keep("/a%2fb"), "/a%2Fb");
        assert_eq!(keep("/a\\b"), "/a%5Cb");
        let decode = |p| normalize(p, EscapedSlashes::Decode).unwrap().into_owned();
        assert_eq!(decode("/a%2F..%2Fadmin"), "/admin");
        assert_eq!(decode("/a\\..\\admin"), "/admin");
    }

    #[test]
    fn origin_form_required() {
        assert_eq!(n("admin"), Err(PathError::NotOriginForm));
        assert_eq!(n("%2Fadmin"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn idempotent_on_samples() {
        for mode in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            for p in [
                "/a/./b/../c//d/",
                "/%41%2f%5C/..",
                "/x\\y/%7E",
                "/./",
                "/%25",
            ] {
                if let Ok(once) = normalize(p, mode) {
                    let twice = normalize(&once, mode).unwrap();
                    assert_eq!(once, twice, "{p} in {mode:?}");
                }
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that matter to normalization, so cases are dense in
        /// dot segments, escapes and slashes rather than in random letters.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/", "/", "//", ".", "..", "a", "admin", "%2e", "%2E", "%2f", "%2F", "%5c", "\\",
                "%61", "%7E", "~", "%20", "%3f", "%", "%zz", "%4", "-", "_",
            ]);
            prop::collection::vec(piece, 0..12).prop_map(|p| format!("/{}", p.concat()))
        }

        fn mode() -> impl Strategy<Value = EscapedSlashes> {
            prop::sample::select(vec![
                EscapedSlashes::Reject,
                EscapedSlashes::Keep,
                EscapedSlashes::Decode,
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn normalizing_twice_changes_nothing(p in path(), m in mode()) {
                if let Ok(once) = normalize(&p, m) {
                    let twice = normalize(&once, m).expect("a normal form is accepted again");
                    prop_assert_eq!(&*once, &*twice);
                }
            }

            #[test]
            fn a_normal_form_has_no_spelling_left_to_vary(p in path(), m in mode()) {
                if let Ok(n) = normalize(&p, m) {
                    prop_assert!(n.starts_with('/'));
                    prop_assert!(!n.contains("//"), "{}", n);
                    prop_assert!(!n.contains('\\'), "{}", n);
                    for seg in n.split('/') {
                        prop_assert!(seg != "." && seg != "..", "{}", n);
                    }
                    // every escape left is upper-case and of a reserved byte
                    let b = n.as_bytes();
                    for (i, _) in n.match_indices('%') {
                        let hi = b[i + 1];
                        let lo = b[i + 2];
                        prop_assert!(!hi.is_ascii_lowercase() && !lo.is_ascii_lowercase(), "{}", n);
                        let byte = hex(hi).unwrap() << 4 | hex(lo).unwrap();
                        prop_assert!(!is_unreserved(byte), "{}", n);
                    }
                }
            }

            #[test]
            fn reject_refuses_exactly_what_mentions_an_escaped_slash(p in path()) {
                let lower = p.to_ascii_lowercase();
                let slashy = lower.contains("%2f") || lower.contains("%5c") || p.contains('\\');
                match normalize(&p, EscapedSlashes::Reject) {
                    Err(PathError::EscapedSlash | PathError::Backslash) => prop_assert!(slashy),
                    Err(PathError::MalformedEscape { .. }) => {}
                    Err(e) => prop_assert!(false, "{}: {}", p, e),
                    Ok(_) => prop_assert!(!slashy),
                }
            }
        }
    }
}
