//! Reading `.env` the way python-dotenv's `load_dotenv()` does, so that the `.env` of the service comfyd
//! replaces works unchanged.
//!
//! dotenvy (used before) reads most such files the same, but not all: it expands `$NAME` (a password
//! `"pa$$word"` came out as `pa`), refuses escapes like `\t` and unquoted values with spaces, and
//! stops at a line without `=`. python-dotenv's rules, which this module follows:
//! - `[export ]KEY = value`, spaces allowed around `=`; `KEY` is anything up to `=`, `#` or a space
//!   (or `'quoted'`); a line holding only `KEY` sets nothing.
//! - `"double quoted"`: may span lines; `\\ \' \" \a \b \f \n \r \t \v` are decoded, any other
//!   backslash is kept. `'single quoted'`: may span lines; only `\\` and `\'` are decoded.
//! - unquoted: the rest of the line, cut at the first ` #` (a `#` after whitespace), trailing
//!   whitespace removed; `KEY=#x` is `#x`, `KEY= #x` is empty.
//! - after a quoted value only whitespace and a `# comment` may follow.
//! - `${NAME}` and `${NAME:-default}` are expanded in every value (quoted or not; `$NAME` is not):
//!   from the process environment first, then from the lines above, else the default or "".
//! - a variable already in the environment is not replaced.
//!
//! One difference on purpose: python-dotenv skips a line it cannot parse with a warning; comfyd stops
//! at start and names the line, as it does for every bad setting.

use std::collections::HashMap;
use std::path::Path;

/// One `KEY=value` of a `.env` file; `value` is None for a bare `KEY` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub key: String,
    pub value: Option<String>,
    /// 1-based line where the binding starts.
    pub line: usize,
}

/// Why a `.env` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Loads `path` into the process environment, leaving variables that are already set alone.
/// A missing file is not an error (Ok(false)). Call it before any other thread runs: it sets
/// environment variables.
pub fn load(path: &Path) -> anyhow::Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let bindings = parse(&text).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let values = resolve(&bindings, |name| std::env::var(name).ok());
    for (key, value) in values {
        if std::env::var_os(&key).is_none() {
            // Single-threaded at this point (see the function docs).
            std::env::set_var(&key, value);
        }
    }
    Ok(true)
}

/// The variables a `.env` text sets, in file order (a later duplicate wins), with `${...}` expanded;
/// `env` looks up the process environment.
pub fn resolve(
    bindings: &[Binding],
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    // A bare `KEY` line counts as known and empty for the lines below it (python-dotenv's None).
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for b in bindings {
        let Some(raw) = &b.value else {
            seen.insert(b.key.clone(), None);
            out.retain(|(k, _)| k != &b.key);
            continue;
        };
        let value = expand(raw, |name| {
            env(name).or_else(|| seen.get(name).map(|v| v.clone().unwrap_or_default()))
        });
        seen.insert(b.key.clone(), Some(value.clone()));
        out.retain(|(k, _)| k != &b.key);
        out.push((b.key.clone(), value));
    }
    out
}

/// Expands `${NAME}` and `${NAME:-default}`.
fn expand(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        // python-dotenv's pattern: the name holds no ':' unless it starts the `:-default`.
        if name.contains(':') {
            out.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(&lookup(name).unwrap_or_else(|| default.unwrap_or("").to_string()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses a `.env` text into its bindings.
pub fn parse(text: &str) -> Result<Vec<Binding>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        s: text,
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    loop {
        p.skip_while(char::is_whitespace);
        if p.at_end() {
            return Ok(out);
        }
        let line = p.line;
        if p.peek() == Some('#') {
            p.skip_line();
            continue;
        }
        if p.rest().starts_with("export") {
            let after = &p.rest()["export".len()..];
            if after.starts_with([' ', '\t']) {
                p.advance("export".len());
                p.skip_while(is_blank);
            }
        }
        let key = p
            .key()
            .ok_or_else(|| p.err(line, "expected a variable name"))?;
        p.skip_while(is_blank);
        let value = if p.peek() == Some('=') {
            p.advance(1);
            let spaced = p.peek().is_some_and(is_blank);
            p.skip_while(is_blank);
            Some(p.value(spaced, line)?)
        } else {
            None
        };
        // Only a comment may follow on the line.
        p.skip_while(is_blank);
        match p.peek() {
            None | Some('\n' | '\r') => {}
            Some('#') => p.skip_line(),
            Some(_) => {
                return Err(p.err(
                    line,
                    &format!(
                        "unexpected text after the value of {key} (quote values that hold it)"
                    ),
                ))
            }
        }
        out.push(Binding { key, value, line });
    }
}

fn is_blank(c: char) -> bool {
    c.is_whitespace() && c != '\n' && c != '\r'
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn advance(&mut self, bytes: usize) {
        let taken = &self.s[self.pos..self.pos + bytes];
        // \r\n, \n and \r each end one line.
        self.line += taken.matches('\n').count() + taken.matches('\r').count()
            - taken.matches("\r\n").count();
        self.pos += bytes;
    }

    fn skip_while(&mut self, f: impl Fn(char) -> bool) {
        let n = self
            .rest()
            .find(|c: char| !f(c))
            .unwrap_or(self.rest().len());
        self.advance(n);
    }

    fn skip_line(&mut self) {
        self.skip_while(|c| c != '\n' && c != '\r');
    }

    fn err(&self, line: usize, reason: &str) -> ParseError {
        ParseError {
            line,
            reason: reason.into(),
        }
    }

    fn key(&mut self) -> Option<String> {
        if self.peek() == Some('\'') {
            let body = &self.rest()[1..];
            let end = body.find('\'')?;
            if end == 0 {
                return None;
            }
            let key = body[..end].to_string();
            self.advance(end + 2);
            return Some(key);
        }
        let n = self
            .rest()
            .find(|c: char| c == '=' || c == '#' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        if n == 0 {
            return None;
        }
        let key = self.rest()[..n].to_string();
        self.advance(n);
        Some(key)
    }

    /// The value after `=` (and the blanks after it); `spaced`: there were blanks.
    fn value(&mut self, spaced: bool, line: usize) -> Result<String, ParseError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                let body = &self.rest()[1..];
                // The closing quote is the first one not right after a backslash (python-dotenv's
                // pattern `"((?:\\"|[^"])*)"`: so `"a\\"` is not closed by its last quote).
                // With no such quote, the pattern backtracks: the last quote after a backslash closes.
                let mut end = None;
                let mut last_escaped = None;
                let mut prev = None;
                for (i, c) in body.char_indices() {
                    if c == q {
                        if prev != Some('\\') {
                            end = Some(i);
                            break;
                        }
                        last_escaped = Some(i);
                    }
                    prev = Some(c);
                }
                let end = end.or(last_escaped);
                let end = end.ok_or_else(|| self.err(line, &format!("no closing {q}")))?;
                let raw = &body[..end];
                let value = if q == '"' {
                    unescape(raw, "\\'\"abfnrtv")
                } else {
                    unescape(raw, "\\'")
                };
                self.advance(end + 2);
                Ok(value)
            }
            None | Some('\n' | '\r') => Ok(String::new()),
            Some(_) => {
                let n = self.rest().find(['\n', '\r']).unwrap_or(self.rest().len());
                let part = self.rest()[..n].to_string();
                self.advance(n);
                if spaced && part.starts_with('#') {
                    return Ok(String::new());
                }
                // Cut at the first whitespace followed (after more whitespace) by '#'.
                let mut cut = part.len();
                for (i, c) in part.char_indices() {
                    if c.is_whitespace() && part[i..].trim_start().starts_with('#') {
                        cut = i;
                        break;
                    }
                }
                Ok(part[..cut].trim_end().to_string())
            }
        }
    }
}

/// Decodes `\x` for each `x` in `known`; other backslashes stay as written.
fn unescape(raw: &str, known: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('\\', Some(n)) if known.contains(n) => {
                chars.next();
                out.push(match n {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    other => other,
                });
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, String)> {
        resolve(&parse(text).expect("parses"), |_| None)
    }

    fn value(text: &str) -> String {
        let v = values(text);
        assert_eq!(v.len(), 1, "{text:?} → {v:?}");
        v[0].1.clone()
    }

    /// The `.env` of the original service's README, verbatim.
    const ORIGINAL: &str = include_str!("tests/fixtures/original.env");

    #[test]
    fn reads_the_original_readme_example() {
        let v = values(ORIGINAL);
        let get = |k: &str| {
            v.iter()
                .find(|(key, _)| key == k)
                .map(|(_, val)| val.as_str())
                .unwrap_or_else(|| panic!("{k} missing from {v:?}"))
        };
        assert_eq!(v.len(), 13);
        assert_eq!(
            get("COMFYUI_ENDPOINTS"),
            "localhost:8188,localhost:8189,localhost:8190"
        );
        assert_eq!(get("AWS_SECRET_ACCESS_KEY"), "secret_access_key");
        assert_eq!(get("RDB_PORT"), "5432");
        assert_eq!(get("DEFAULT_FAILED_IMAGE_PATH"), "../tmp/failed_images");
        assert_eq!(get("ROUTE_PREFIX"), "/api/v1");
    }

    #[test]
    fn spaces_around_equals_export_and_comments() {
        assert_eq!(value("A=1"), "1");
        assert_eq!(value("A = 1"), "1");
        assert_eq!(value("  export A = 1  "), "1");
        assert_eq!(value("A=1 # note"), "1");
        assert_eq!(value("A=1#not a comment"), "1#not a comment");
        assert_eq!(value("A=#x"), "#x");
        assert_eq!(value("A= #x"), "");
        assert_eq!(value("A="), "");
        assert_eq!(value("A=a b  c  "), "a b  c");
        assert_eq!(value("# only a comment\nA=1\n\n#x"), "1");
        assert_eq!(value("export=1"), "1");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(value(r#"A="x # y""#), "x # y");
        assert_eq!(value(r#"A="a\tb\n\"q\" \\ \x""#), "a\tb\n\"q\" \\ \\x");
        assert_eq!(value(r"A='a\tb \' \\'"), r"a\tb ' \");
        assert_eq!(value("A=\"two\nlines\""), "two\nlines");
        assert_eq!(value("A='x'   # c"), "x");
        assert_eq!(value("'A'=1"), "1");
    }

    #[test]
    fn dollar_signs_stay_unless_braced() {
        assert_eq!(value(r#"P="pa$$word$x""#), "pa$$word$x");
        assert_eq!(value("P=$HOME"), "$HOME");
        let v = resolve(
            &parse("A=1\nB=${A}-${MISSING:-d}-${E}-${N:x}\nC='${A}'").expect("parses"),
            |name| (name == "E").then(|| "env".to_string()),
        );
        assert_eq!(v[1].1, "1-d-env-${N:x}");
        // Single quotes do not stop the expansion in python-dotenv either.
        assert_eq!(v[2].1, "1");
    }

    #[test]
    fn the_environment_wins_in_expansion_and_duplicates_take_the_last() {
        let v = resolve(&parse("A=file\nB=${A}\nB=again").expect("parses"), |n| {
            (n == "A").then(|| "env".to_string())
        });
        assert_eq!(
            v,
            vec![
                ("A".to_string(), "file".to_string()),
                ("B".to_string(), "again".to_string())
            ]
        );
        let v = resolve(&parse("A=file\nB=${A}").expect("parses"), |n| {
            (n == "A").then(|| "env".to_string())
        });
        assert_eq!(v[1].1, "env");
    }

    #[test]
    fn a_bare_key_sets_nothing() {
        let b = parse("ALONE\nA=1").expect("parses");
        assert_eq!(b[0].value, None);
        assert_eq!(values("ALONE\nA=1"), vec![("A".into(), "1".into())]);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("A=1\nB=\"open").expect_err("unclosed");
        assert_eq!(e.line, 2);
        let e = parse("A=1\n\nB=\"x\" y").expect_err("text after the quote");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains('B'), "{e}");
        let e = parse("=1").expect_err("no key");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn crlf_line_ends() {
        let b = parse("A = \"1\"  # c\r\nB=2\r\n").expect("parses");
        assert_eq!(b[1].line, 2);
        assert_eq!(
            resolve(&b, |_| None),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
    }
}
