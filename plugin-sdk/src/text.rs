//! Helpers for chat text that several plugins need.

/// The names after each `@` that starts a word: letters, digits, `_` and `-`. An `@`
/// inside a word (an e-mail address) is no mention.
///
/// ```
/// let names: Vec<&str> = hookwire_plugin::text::mentions("hi @bob, mail@x.org @al-2").collect();
/// assert_eq!(names, ["bob", "al-2"]);
/// ```
pub fn mentions(text: &str) -> impl Iterator<Item = &str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices('@').filter_map(move |(at, _)| {
        let starts_word = !text[..at].ends_with(|c: char| c.is_alphanumeric());
        let rest = &text[at + 1..];
        let name = &rest[..rest.find(|c| !is_name(c)).unwrap_or(rest.len())];
        (starts_word && !name.is_empty()).then_some(name)
    })
}
