//! Tests of the bounded config reader.

use super::*;

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qzb-cfgfile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn problem(r: Result<String>) -> (String, bool) {
    match r {
        Err(FileError {
            problem, not_found, ..
        }) => (problem, not_found),
        other => panic!("expected a config file error, got {other:?}"),
    }
}

#[test]
fn a_regular_file_up_to_the_cap_is_read() {
    let d = dir("ok");
    let p = d.join("a.yaml");
    std::fs::write(&p, "name: x\n").unwrap();
    assert_eq!(read(&p).unwrap(), "name: x\n");
    std::fs::write(&p, "x".repeat(64)).unwrap();
    assert_eq!(read_capped(&p, 64).unwrap().len(), 64);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_file_over_the_cap_is_refused_with_its_size() {
    let d = dir("big");
    let p = d.join("a.yaml");
    std::fs::write(&p, "x".repeat(65)).unwrap();
    let (msg, nf) = problem(read_capped(&p, 64));
    assert!(!nf);
    assert!(
        msg.contains("65 bytes") && msg.contains("64 bytes"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reading_stops_one_byte_past_the_cap() {
    // What a file that grows after the size check would give: never more than cap + 1.
    let d = dir("take");
    let p = d.join("a.yaml");
    std::fs::write(&p, "x".repeat(10_000)).unwrap();
    let bytes = read_at_most(File::open(&p).unwrap(), 100).unwrap();
    assert_eq!(bytes.len(), 101);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn directories_devices_and_missing_files_are_named() {
    let d = dir("kinds");
    let (msg, nf) = problem(read(&d));
    assert!(!nf);
    assert!(msg.contains("a directory"), "{msg}");
    let (msg, _) = problem(read(Path::new("/dev/zero")));
    assert!(msg.contains("a character device"), "{msg}");
    let (_, nf) = problem(read(d.join("missing.yaml")));
    assert!(nf);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let d = dir("fifo");
    let p = d.join("pipe.yaml");
    let made = std::process::Command::new("mkfifo").arg(&p).status();
    if !matches!(made, Ok(s) if s.success()) {
        eprintln!("mkfifo is not available; skipping");
        return;
    }
    let (msg, _) = problem(read(&p));
    assert!(msg.contains("a FIFO"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn non_utf8_is_refused_with_its_offset() {
    let d = dir("utf8");
    let p = d.join("a.yaml");
    std::fs::write(&p, b"ab\xffcd").unwrap();
    let (msg, _) = problem(read(&p));
    assert!(msg.contains("offset 2"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}
