//! Size bounds of statuses, and the one place text and lists are cut to fit them.
//!
//! The schema bounds every status string and list (`maxLength`, `maxItems`), so the API server
//! refuses an oversize status whole: one long error message from a host would make every write of
//! that status fail. So whatever poolkeeper does not write itself (a host's error message, why a
//! report does not parse) is cut with [`outside`] before it enters a message, lists of names are
//! cut with [`listed`], and [`crate::api::condition::set_condition`] cuts every condition message
//! to [`CONDITION_MESSAGE_MAX`] as the last guard. Cuts fall on a character boundary and end in
//! [`CUT_MARKER`], so a reader sees that something was left out. Pure.

use std::borrow::Cow;
use std::fmt::Display;

/// `metav1.Condition.type` holds at most this many characters.
pub const CONDITION_TYPE_MAX: usize = 316;
/// `metav1.Condition.type`: a CamelCase name, optionally prefixed by a DNS subdomain and `/`.
pub const CONDITION_TYPE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
/// `metav1.Condition.reason` holds at most this many characters.
pub const CONDITION_REASON_MAX: usize = 1024;
/// `metav1.Condition.reason`: a CamelCase identifier.
pub const CONDITION_REASON_PATTERN: &str = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";
/// `metav1.Condition.message` holds at most this many characters.
pub const CONDITION_MESSAGE_MAX: usize = 32768;
/// A status lists at most this many conditions.
pub const CONDITIONS_MAX: usize = 16;
/// Text from outside (a host's error message, why its report does not parse) keeps at most this
/// many characters in a status.
pub const OUTSIDE_TEXT_MAX: usize = 512;
/// A list in a message names at most this many items, then says how many more there are.
pub const LISTED_MAX: usize = 10;
/// An object name (`metadata.name`, a DNS subdomain) has at most this many characters.
pub const NAME_MAX: usize = 253;
/// A UUID in 8-4-4-4-12 form has this many characters.
pub const UUID_MAX: usize = 36;
/// Ends a cut text.
pub const CUT_MARKER: &str = "...";

/// `text` in at most `max` characters: unchanged when it fits, else its start followed by
/// [`CUT_MARKER`], cut at a character boundary.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.char_indices().nth(max).is_none() {
        return Cow::Borrowed(text);
    }
    let keep = max.saturating_sub(CUT_MARKER.chars().count());
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let mut out = String::with_capacity(end + CUT_MARKER.len());
    out.push_str(&text[..end]);
    out.push_str(CUT_MARKER);
    if out.chars().count() > max {
        // Only when `max` is shorter than the marker itself.
        out = CUT_MARKER.chars().take(max).collect();
    }
    Cow::Owned(out)
}

/// Text from outside poolkeeper, cut to [`OUTSIDE_TEXT_MAX`] characters.
pub fn outside(text: &str) -> Cow<'_, str> {
    cut(text, OUTSIDE_TEXT_MAX)
}

/// A name or uuid from outside, quoted for a message: `"text"` with escapes, cut to a little more
/// than a uuid's length, so a message quoting it stays short whatever was sent.
pub fn quote(text: &str) -> String {
    format!("{:?}", cut(text, UUID_MAX + 4))
}

/// `a, b, c`: at most `max` items joined by `, `, followed by ` and K more` when K were left out.
pub fn listed<T: Display>(items: impl IntoIterator<Item = T>, max: usize) -> String {
    let mut out = String::new();
    let mut more = 0usize;
    for (i, item) in items.into_iter().enumerate() {
        if i >= max {
            more += 1;
        } else {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&item.to_string());
        }
    }
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_fits_is_borrowed_unchanged() {
        assert!(matches!(cut("héllo", 5), Cow::Borrowed("héllo")));
        assert_eq!(cut("", 0), "");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_the_marker() {
        let long = "é".repeat(100);
        let cut = cut(&long, 10);
        assert_eq!(cut.chars().count(), 10);
        assert_eq!(cut, format!("{}{CUT_MARKER}", "é".repeat(7)));
        // Multi-byte characters at every position: never split.
        let mixed = "a€😀".repeat(50);
        for max in 0..40 {
            let c = super::cut(&mixed, max);
            assert!(c.chars().count() <= max, "{max}: {c}");
        }
    }

    #[test]
    fn a_bound_shorter_than_the_marker_still_holds() {
        assert_eq!(cut("abcdef", 2), "..");
        assert_eq!(cut("abcdef", 0), "");
    }

    #[test]
    fn outside_text_keeps_the_outside_bound() {
        let huge = "x".repeat(1 << 20);
        let c = outside(&huge);
        assert_eq!(c.chars().count(), OUTSIDE_TEXT_MAX);
        assert!(c.ends_with(CUT_MARKER));
    }

    #[test]
    fn lists_name_the_first_items_and_count_the_rest() {
        assert_eq!(listed(["a", "b"], 3), "a, b");
        assert_eq!(listed(["a", "b", "c"], 3), "a, b, c");
        assert_eq!(listed(["a", "b", "c", "d", "e"], 3), "a, b, c and 2 more");
        assert_eq!(listed(Vec::<&str>::new(), 3), "");
        assert_eq!(listed(1..=1000, 2), "1, 2 and 998 more");
    }
}
