use super::*;

fn texts(lines: &mut Lines) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(inbound) = lines.next() {
        match inbound {
            Inbound::Text(t) => out.push(String::from_utf8(t.to_vec()).unwrap()),
            other => out.push(format!("{other:?}")),
        }
    }
    out
}

#[test]
fn lines_split_across_and_within_chunks() {
    let mut lines = Lines::new(64);
    lines.feed(Bytes::from_static(b"{\"a\":1}\n{\"b\""));
    assert_eq!(texts(&mut lines), ["{\"a\":1}"]);
    lines.feed(Bytes::from_static(b":2}\r\n\n{\"c\":3}\n"));
    assert_eq!(texts(&mut lines), ["{\"b\":2}", "{\"c\":3}"]);
    // Nothing left behind: no capacity kept between lines.
    assert!(lines.partial.is_empty() && lines.partial.capacity() == 0);
}

#[test]
fn a_line_over_the_limit_is_too_large_even_before_its_newline() {
    let mut lines = Lines::new(8);
    lines.feed(Bytes::from_static(b"0123456789"));
    assert!(matches!(lines.next(), Some(Inbound::TooLarge)));
    let mut lines = Lines::new(8);
    lines.feed(Bytes::from_static(b"012\n0123456789\n"));
    assert!(matches!(lines.next(), Some(Inbound::Text(_))));
    assert!(matches!(lines.next(), Some(Inbound::TooLarge)));
}
