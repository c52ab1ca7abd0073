//! The `key=value,key="a,b"` lists that buildctl flags take (`--output`,
//! `--secret`, `--export-cache`, …): one CSV record, fields split on commas
//! outside double quotes, `""` inside quotes for a literal quote.

/// Splits one CSV record into fields.
pub fn fields(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {text:?}"));
    }
    out.push(field);
    Ok(out)
}

/// Splits every field at its first `=`; a field without one is an error
/// naming it, as buildctl reports it.
pub fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    fields(text)?
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
            None => Err(format!("invalid value {f}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_quotes() {
        assert_eq!(fields("a=1,b=2").unwrap(), vec!["a=1", "b=2"]);
        assert_eq!(
            fields("\"name=a,b\",c=\"\"\"x\"").unwrap(),
            vec!["name=a,b", "c=\"\"\"x\""]
        );
        assert_eq!(fields("\"q\"\"x\"").unwrap(), vec!["q\"x"]);
        assert!(fields("\"open").is_err());
        assert_eq!(
            key_values("type=image,\"name=a/b:1,a/b:2\",push=true").unwrap(),
            vec![
                ("type".to_string(), "image".to_string()),
                ("name".to_string(), "a/b:1,a/b:2".to_string()),
                ("push".to_string(), "true".to_string()),
            ]
        );
        assert_eq!(key_values("nokey").unwrap_err(), "invalid value nokey");
    }
}
