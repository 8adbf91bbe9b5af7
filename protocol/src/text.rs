//! Text from the other side (or from a tool) made safe to put inside one line of a message:
//! one implementation for the driver and the agent.

/// Escapes every control character (newline included) and the invisible format characters that
/// reorder or hide text, and cuts the result at `max` characters (`…` marks the cut), so the
/// text can neither rewrite a terminal nor start a line that looks like our own output.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// How much of a quoted value a message shows.
pub const QUOTED_MAX: usize = 200;

/// `'text'`, escaped onto one line and bounded: how a message shows a value it was given.
pub fn quoted(s: &str) -> String {
    format!("'{}'", one_line(s, QUOTED_MAX))
}

fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_stays_on_one_bounded_line() {
        assert_eq!(
            one_line("ok\nerror: fake line\r\x1b[2J\u{202e}x", 100),
            "ok\\nerror: fake line\\r\\u{1b}[2J\\u{202e}x"
        );
        assert_eq!(
            one_line(&"y".repeat(50), 10),
            format!("{}…", "y".repeat(10))
        );
        assert_eq!(quoted("a\nb"), "'a\\nb'");
    }
}
