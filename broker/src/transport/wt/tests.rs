use std::collections::VecDeque;

use super::*;

fn texts(lines: &mut Lines) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(inbound) = lines.next_line() {
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
    assert!(matches!(lines.next_line(), Some(Inbound::TooLarge)));
    let mut lines = Lines::new(8);
    lines.feed(Bytes::from_static(b"012\n0123456789\n"));
    assert!(matches!(lines.next_line(), Some(Inbound::Text(_))));
    assert!(matches!(lines.next_line(), Some(Inbound::TooLarge)));
}

#[test]
fn a_batch_is_gathered_into_few_chunks_and_large_frames_stay_shared() {
    let small = |s: &str| crate::protocol::encode(&s);
    let large = crate::protocol::encode(&"x".repeat(COPY_BELOW));
    let mut batch = VecDeque::from([small("a"), small("b"), large.clone(), small("c")]);
    let mut chunks = Vec::new();
    gather(&mut batch, &mut chunks);
    assert!(batch.is_empty());
    let text: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let expected = format!("\"a\"\n\"b\"\n{}\n\"c\"\n", large.as_str());
    assert_eq!(String::from_utf8(text).unwrap(), expected);
    // The two small frames in one chunk, the large one as its own bytes, its newline, the last small one.
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[1].as_ptr(), large.as_bytes().as_ptr());
}
