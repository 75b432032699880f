//! libpq's connection-string syntax, as far as tokio-postgres does not
//! read it: the TLS options taken out of a `postgres://` URL's query or a
//! `key=value` string (and libpq's `PGSSL*` environment variables), the rest
//! handed back for tokio-postgres to parse.

use super::DbUrlError;

/// The TLS options this module takes out of a connection string.
#[derive(Debug, Default)]
pub(super) struct TlsOptions {
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
    pub(super) sslcert: Option<String>,
    pub(super) sslkey: Option<String>,
}

impl TlsOptions {
    /// Takes `key` if it is one of ours; false leaves it to tokio-postgres.
    pub(super) fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// libpq's environment variables: `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`.
    pub(super) fn from_env() -> Self {
        let set = |v: Result<String, std::env::VarError>| v.ok().filter(|v| !v.is_empty());
        Self {
            sslmode: set(std::env::var("PGSSLMODE")),
            sslrootcert: set(std::env::var("PGSSLROOTCERT")),
            sslcert: set(std::env::var("PGSSLCERT")),
            sslkey: set(std::env::var("PGSSLKEY")),
        }
    }

    /// Fills what the string left out from `defaults`.
    pub(super) fn or(self, defaults: TlsOptions) -> Self {
        Self {
            sslmode: self.sslmode.or(defaults.sslmode),
            sslrootcert: self.sslrootcert.or(defaults.sslrootcert),
            sslcert: self.sslcert.or(defaults.sslcert),
            sslkey: self.sslkey.or(defaults.sslkey),
        }
    }
}

/// The text of a tokio-postgres error's cause, which names the option and never its value.
pub(super) trait SourceText {
    fn source_text(&self) -> String;
}

impl SourceText for tokio_postgres::Error {
    /// tokio-postgres's parse errors name the option (`invalid value for option \`port\``).
    fn source_text(&self) -> String {
        use std::error::Error as _;
        match self.source() {
            Some(s) => s.to_string(),
            None => self.to_string(),
        }
    }
}

/// Takes our options out of a URL's query string; the rest is left as it was.
pub(super) fn strip_url_options(url: &str, tls: &mut TlsOptions) -> Result<String, DbUrlError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        if !tls.take(&key, percent_decode(v)?) {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) })
}

fn percent_decode(s: &str) -> Result<String, DbUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(|| DbUrlError::Syntax("bad percent-encoding".into()))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| DbUrlError::Syntax("bad percent-encoding".into()))?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DbUrlError::Syntax("percent-encoding is not UTF-8".into()))
}

/// Takes our options out of a `key=value` string and writes the rest back,
/// every value quoted.
pub(super) fn strip_keyword_options(s: &str, tls: &mut TlsOptions) -> Result<String, DbUrlError> {
    let mut kept = Vec::new();
    for (key, value) in parse_keywords(s)? {
        if !tls.take(&key, value.clone()) {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok(kept.join(" "))
}

/// libpq's `key = value` syntax: values bare or single-quoted, `\` escaping.
fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, DbUrlError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DbUrlError::Syntax(format!(
                "expected `=` after `{}`",
                key.chars().take(32).collect::<String>()
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(DbUrlError::Syntax(format!("unterminated quoted value of `{key}`"))),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().unwrap_or('\\')),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().unwrap_or('\\'));
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}
