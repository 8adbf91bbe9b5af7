//! Tests of the strict YAML reader: YAML 1.1 scalar resolution, positions, duplicate keys, a
//! syntax error's hint, refused documents, aliases and tags, alias expansion caps, and garbage
//! and deep nesting that must never panic.

use super::*;

fn map(n: &Node) -> &Vec<(Node, Node)> {
    match &n.value {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

#[test]
fn yaml11_booleans_resolve_but_quoted_ones_stay_text() {
    let n = parse("a: yes\nb: off\nc: 'yes'\nd: y\ne: True\n").unwrap();
    let m = map(&n);
    assert_eq!(m[0].1.value, Value::Bool(true));
    assert_eq!(m[1].1.value, Value::Bool(false));
    assert_eq!(m[2].1.value, Value::Str("yes".into()));
    assert_eq!(m[3].1.value, Value::Str("y".into()));
    assert_eq!(m[4].1.value, Value::Bool(true));
}

#[test]
fn numbers_dates_and_nulls_are_not_text() {
    let n = parse("a: 1\nb: 0o17\nc: 1.5\nd: 2025-04-14\ne:\nf: ~\ng: 1_000\nh: abc\n").unwrap();
    let kinds: Vec<_> = map(&n).iter().map(|(_, v)| v.value.clone()).collect();
    assert!(matches!(kinds[0], Value::Int(_)));
    assert!(matches!(kinds[1], Value::Int(_)));
    assert!(matches!(kinds[2], Value::Float(_)));
    assert!(matches!(kinds[3], Value::Date(_)));
    assert_eq!(kinds[4], Value::Null);
    assert_eq!(kinds[5], Value::Null);
    assert!(matches!(kinds[6], Value::Int(_)));
    assert_eq!(kinds[7], Value::Str("abc".into()));
}

#[test]
fn positions_are_one_based_line_and_column() {
    let n = parse("name: x\nscope:\n  since: beginning\n").unwrap();
    let m = map(&n);
    assert_eq!(m[0].0.pos, Pos { line: 1, column: 1 });
    assert_eq!(m[0].1.pos, Pos { line: 1, column: 7 });
    let scope = map(&m[1].1);
    assert_eq!(scope[0].0.pos, Pos { line: 3, column: 3 });
}

#[test]
fn duplicate_keys_are_kept_for_the_checker() {
    let n = parse("a: 1\na: 2\n").unwrap();
    assert_eq!(map(&n).len(), 2);
}

#[test]
fn unquoted_at_sign_is_a_syntax_error_with_a_hint() {
    let e = parse("scope:\n  target-snapshot: @b2\n").unwrap_err();
    assert_eq!(e.pos.line, 2);
    assert!(e.message.contains("must be quoted"), "{}", e.message);
}

#[test]
fn empty_and_multi_document_files_are_refused() {
    assert!(parse("").unwrap_err().message.contains("empty"));
    assert!(parse("# only a comment\n")
        .unwrap_err()
        .message
        .contains("empty"));
    assert!(parse("a: 1\n---\nb: 2\n")
        .unwrap_err()
        .message
        .contains("more than one"));
}

#[test]
fn aliases_resolve_and_str_tags_force_text() {
    let n = parse("a: &x [1, 2]\nb: *x\nc: !!str yes\n").unwrap();
    let m = map(&n);
    assert!(matches!(&m[1].1.value, Value::Seq(v) if v.len() == 2));
    assert_eq!(m[2].1.value, Value::Str("yes".into()));
}

/// The classic "billion laughs": each level doubles (here: multiplies by nine) the one below.
fn alias_bomb(levels: usize) -> String {
    let mut text = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..levels {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text
}

#[test]
fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_cap() {
    // 9^9 = 387 million copies of "lol" if expanded; about 1 KiB of text.
    let text = alias_bomb(10);
    assert!(text.len() < 1500, "{}", text.len());
    let e = parse(&text).unwrap_err();
    assert!(
        e.message.contains("would expand to more than"),
        "{}",
        e.message
    );
    // Levels a0..a4 add 15,678 nodes; each alias of a4 adds 13,942 more, so the seventh
    // alias on line 6 (a5) crosses 100,000: the error is there.
    assert_eq!(e.pos.line, 6, "{e:?}");
    assert!(e.pos.column > 1, "{e:?}");
}

#[test]
fn a_long_anchored_string_repeated_is_refused_by_its_bytes() {
    let big = "x".repeat(100_000);
    let refs = vec!["*s"; 50].join(", ");
    let e = parse(&format!("s: &s \"{big}\"\nt: [{refs}]\n")).unwrap_err();
    assert!(e.message.contains("MiB of text"), "{}", e.message);
    assert_eq!(e.pos.line, 2);
}

#[test]
fn aliases_within_the_cap_still_expand() {
    let n = parse(&alias_bomb(5)).unwrap(); // 15,678 nodes added by aliases
    assert_eq!(map(&n).len(), 5);
}

#[test]
fn garbage_never_panics() {
    let samples = [
        "{",
        "[",
        "a: [",
        "- - -",
        "a: b: c",
        "? ",
        "*x",
        "&a",
        "!!",
        "\t",
        "a:\n\t- b",
        "'unterminated",
        "\"bad \\q escape\"",
        "%YAML 9.9\n---\na",
        "[[[[[[[[[[",
    ];
    for s in samples {
        let _ = parse(s);
    }
    let deep = "[".repeat(500) + &"]".repeat(500);
    assert!(parse(&deep).is_err());
}
