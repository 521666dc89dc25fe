//! A well-formedness check for the SVG the recorder writes, without an XML dependency: one root
//! element, tags that nest and close, quoted attributes, known entities, no stray `<` or `&`.

/// Checks that `doc` is a well-formed XML document and returns its text content (entities
/// decoded), one string per text node; panics with the position of the first error.
pub fn text_nodes(doc: &str) -> Vec<String> {
    let mut rest = doc;
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut texts = Vec::new();
    let at = |rest: &str| doc.len() - rest.len();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after
                .find("?>")
                .unwrap_or_else(|| panic!("unclosed <? at {}", at(rest)));
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix("<!--") {
            let end = after
                .find("-->")
                .unwrap_or_else(|| panic!("unclosed comment at {}", at(rest)));
            rest = &after[end + 3..];
        } else if let Some(after) = rest.strip_prefix("</") {
            let end = after
                .find('>')
                .unwrap_or_else(|| panic!("unclosed end tag at {}", at(rest)));
            let name = after[..end].trim_end();
            assert_eq!(
                open.pop(),
                Some(name),
                "mismatched </{name}> at {}",
                at(rest)
            );
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('<') {
            let end = after
                .find('>')
                .unwrap_or_else(|| panic!("unclosed tag at {}", at(rest)));
            let tag = &after[..end];
            let (body, empty) = match tag.strip_suffix('/') {
                Some(body) => (body, true),
                None => (tag, false),
            };
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            assert!(is_name(name), "bad element name {name:?} at {}", at(rest));
            check_attributes(&body[name_end..], at(rest));
            if open.is_empty() {
                roots += 1;
            }
            if !empty {
                open.push(name);
            }
            rest = &after[end + 1..];
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            if open.is_empty() {
                assert!(
                    text.trim().is_empty(),
                    "text outside the root at {}",
                    at(rest)
                );
            } else {
                texts.push(decode(text, at(rest)));
            }
            rest = &rest[end..];
        }
    }
    assert!(open.is_empty(), "unclosed elements {open:?}");
    assert_eq!(roots, 1, "an XML document has one root element");
    texts
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_alphanumeric() || "_:.-".contains(c))
}

/// `name = "value"` pairs (either quote), each name once.
fn check_attributes(mut attrs: &str, pos: usize) {
    let mut seen = Vec::new();
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return;
        }
        let eq = attrs
            .find('=')
            .unwrap_or_else(|| panic!("attribute without `=` at {pos}: {attrs:?}"));
        let name = attrs[..eq].trim();
        assert!(is_name(name), "bad attribute name {name:?} at {pos}");
        assert!(!seen.contains(&name), "attribute {name} twice at {pos}");
        seen.push(name);
        let value = attrs[eq + 1..].trim_start();
        let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'');
        let quote = quote.unwrap_or_else(|| panic!("unquoted value of {name} at {pos}"));
        let close = value[1..]
            .find(quote)
            .unwrap_or_else(|| panic!("unclosed value of {name} at {pos}"));
        let text = &value[1..1 + close];
        assert!(!text.contains('<'), "`<` in the value of {name} at {pos}");
        decode(text, pos);
        attrs = &value[close + 2..];
    }
}

/// Decodes the five predefined entities and character references; panics on a bare `&`.
fn decode(text: &str, pos: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..]
            .find(';')
            .unwrap_or_else(|| panic!("bare `&` near {pos}"));
        let entity = &rest[amp + 1..amp + semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else {
                    entity.strip_prefix('#').and_then(|d| d.parse().ok())
                };
                code.and_then(char::from_u32)
                    .unwrap_or_else(|| panic!("unknown entity &{entity}; near {pos}"))
            }
        };
        out.push(c);
        rest = &rest[amp + semi + 1..];
    }
    out.push_str(rest);
    out
}
