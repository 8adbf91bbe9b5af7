//! Property: `check` (config checker and planner) and the wire agree on names. Every name `check`
//! accepts round-trips through the protocol messages (bincode encode and decode), and every name
//! the wire refuses, `check` refuses. Strings come from a seeded xorshift generator, built from
//! components so that both sides of every rule are exercised.

use super::tests::reference_inventory;
use super::*;
use crate::config;
use qzb_protocol::{
    decode_request, encode_request, DatasetKind as WireKind, InventoryRequest, ReceiveMode,
    ReceiveRequest, Request,
};

const ROUNDS: usize = 1500;
const RECEIVER: &str = "backuppool/backups/mydesktop";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A valid-looking name of `lo..=hi` bytes (components of allowed characters), to probe the
    /// length limits, where a name is valid alone but too long with what is added to it.
    fn long(&mut self, lo: usize, hi: usize, slashes: bool) -> String {
        let len = lo + self.below(hi - lo + 1);
        let mut s = String::from("p");
        while s.len() < len {
            let c = if slashes && self.below(8) == 0 && !s.ends_with('/') && s.len() + 1 < len {
                '/'
            } else {
                self.pick(&['a', 'b', 'z', '0', '_', '.', ':', '-'])
            };
            // A component must not start with '-' or be '.' or '..': keep this one plain.
            let c = if s.ends_with('/') { 'c' } else { c };
            s.push(c);
        }
        s
    }

    /// A name-like string: `/`-separated components, mostly of allowed characters, sometimes
    /// with one that is not, sometimes long enough to cross the 255-byte limit.
    fn name(&mut self) -> String {
        const GOOD: &[char] = &[
            'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Q', '0', '1', '9', '_', '.', ':', ' ', '-',
        ];
        const BAD: &[char] = &[
            '@', '#', '%', '/', '\n', '\0', '\t', 'é', '"', '\\', '\u{1b}', '*', '\'', '$',
        ];
        let components = 1 + self.below(5);
        let mut s = String::new();
        for i in 0..components {
            if i > 0 {
                s.push('/');
            }
            let len = match self.below(10) {
                0 => 0,
                1..=7 => 1 + self.below(12),
                _ => 40 + self.below(120),
            };
            for j in 0..len {
                let c = if self.below(40) == 0 {
                    self.pick(BAD)
                } else if j == 0 && self.below(3) > 0 {
                    // Mostly start with a letter, so that pools are often valid.
                    self.pick(&['a', 'm', 'p', 'z'])
                } else {
                    self.pick(GOOD)
                };
                s.push(c);
            }
        }
        s
    }
}

/// `s` as a YAML double-quoted scalar, exactly (every character survives).
fn yaml_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn config_text(label: &str, receiver: &str, member: &str) -> String {
    format!(
        "name: names\n\
         scope:\n  target-snapshot: {}\n  since: beginning\n  progressive: no\n  honour-origins: no\n\
         allowed-behaviours:\n  snapshot-creation: yes\n  patching: no\n\
         receiver:\n  qube: backups-disp\n  dataset: {}\n\
         include-groups: [data]\nforgo-groups: []\nvoid-groups: []\n\
         data:\n  type: datasets\n  members:\n    - {}\n",
        yaml_quoted(&format!("@{label}")),
        yaml_quoted(receiver),
        yaml_quoted(member)
    )
}

/// What `check` says: the config, if it and the plan made from it have no error.
fn check(label: &str, receiver: &str, member: &str, inv: &Inventory) -> Option<(Config, Plan)> {
    let (config, _) = config::parse(&config_text(label, receiver, member)).ok()?;
    let p = plan(&config, inv);
    p.is_valid().then_some((config, p))
}

/// The bytes of `request` with each stand-in string replaced by the raw text that goes with it,
/// as a peer could send them: names travel as bincode strings (length, then bytes).
fn spliced(request: &Request, swaps: &[(&str, &str)]) -> Vec<u8> {
    fn encoded(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        match s.len() {
            n if n < 251 => v.push(n as u8),
            n if n <= u16::MAX as usize => {
                v.push(251);
                v.extend_from_slice(&(n as u16).to_le_bytes());
            }
            n => {
                v.push(252);
                v.extend_from_slice(&(n as u32).to_le_bytes());
            }
        }
        v.extend_from_slice(s.as_bytes());
        v
    }
    let mut bytes = encode_request(request).expect("encodes");
    for (stand_in, raw) in swaps {
        let old = encoded(stand_in);
        let at = bytes
            .windows(old.len())
            .position(|w| w == old.as_slice())
            .expect("stand-in in the encoding");
        bytes.splice(at..at + old.len(), encoded(raw));
    }
    bytes
}

fn receive_request(root: &str, destination: &str, snapshot: &str) -> Request {
    Request::Receive(ReceiveRequest {
        root: DatasetName::parse(root).unwrap(),
        destination: DatasetName::parse(destination).unwrap(),
        snapshot: SnapshotName::parse(snapshot).unwrap(),
        guid: 7,
        kind: WireKind::Filesystem,
        mode: ReceiveMode::Full,
        origin: None,
    })
}

/// Whether the wire takes a receive of `<root>/<dataset>@label` for each dataset, sent raw.
fn wire_takes_receives(root: &str, datasets: &[&str], label: &str) -> bool {
    let stand_in = receive_request("qa", "qa/qb", "qa/qb@qc");
    datasets.iter().all(|ds| {
        let destination = format!("{root}/{ds}");
        let snapshot = format!("{destination}@{label}");
        let bytes = spliced(
            &stand_in,
            &[
                ("qa/qb@qc", &snapshot),
                ("qa/qb", &destination),
                ("qa", root),
            ],
        );
        decode_request(&bytes).is_ok()
    })
}

fn assert_round_trips(request: Request) {
    let bytes = encode_request(&request).expect("encodes");
    assert_eq!(decode_request(&bytes).expect("decodes"), request);
}

/// The datasets `check` includes with the member `mainpool/dom0`.
const INCLUDED: &[&str] = &["mainpool/dom0", "mainpool/dom0/var"];

#[test]
fn the_baseline_config_of_the_property_passes_check() {
    let inv = reference_inventory();
    let (_, p) = check("b2", RECEIVER, "mainpool/dom0", &inv).expect("valid");
    assert_eq!(p.targets.len(), INCLUDED.len());
}

#[test]
fn every_receiver_dataset_check_accepts_round_trips_and_every_one_the_wire_refuses_check_refuses() {
    let inv = reference_inventory();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let receiver = if rng.below(3) == 0 {
            rng.long(220, 260, true)
        } else {
            rng.name()
        };
        let checked = check("b2", &receiver, "mainpool/dom0", &inv);
        let wire_ok = wire_takes_receives(&receiver, INCLUDED, "b2");
        if let Some((config, p)) = &checked {
            accepted += 1;
            assert!(wire_ok, "check accepts {receiver:?}, the wire refuses it");
            assert_eq!(config.receiver_dataset.as_str(), receiver);
            for t in &p.targets {
                let destination = t
                    .snapshot
                    .dataset()
                    .under(&config.receiver_dataset)
                    .unwrap();
                let snapshot =
                    SnapshotName::new(destination.clone(), t.snapshot.label().clone()).unwrap();
                assert_round_trips(Request::Receive(ReceiveRequest {
                    root: config.receiver_dataset.clone(),
                    destination,
                    snapshot,
                    guid: 1,
                    kind: WireKind::Volume,
                    mode: ReceiveMode::Full,
                    origin: None,
                }));
            }
        } else {
            refused += 1;
        }
        if !wire_ok {
            assert!(
                checked.is_none(),
                "the wire refuses {receiver:?}, check accepts it"
            );
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn every_target_label_check_accepts_round_trips_and_every_one_the_wire_refuses_check_refuses() {
    let inv = reference_inventory();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        // Labels have no '/': take the longest component-ish piece of a generated name.
        let label = if rng.below(3) == 0 {
            rng.long(195, 260, false)
        } else {
            rng.name()
                .replace('/', if rng.below(20) == 0 { "/" } else { "" })
        };
        let checked = check(&label, RECEIVER, "mainpool/dom0", &inv);
        let wire_ok = wire_takes_receives(RECEIVER, INCLUDED, &label);
        if let Some((config, p)) = &checked {
            accepted += 1;
            assert!(wire_ok, "check accepts @{label:?}, the wire refuses it");
            assert_eq!(config.target.as_str(), label);
            for t in &p.targets {
                let on_rx =
                    crate::stream::receiver::on_receiver(&config.receiver_dataset, &t.snapshot)
                        .expect("placed on the receiver");
                assert_round_trips(Request::Receive(ReceiveRequest {
                    root: config.receiver_dataset.clone(),
                    destination: on_rx.dataset().clone(),
                    snapshot: on_rx,
                    guid: 1,
                    kind: WireKind::Filesystem,
                    mode: ReceiveMode::Full,
                    origin: None,
                }));
            }
        } else {
            refused += 1;
        }
        if !wire_ok {
            assert!(
                checked.is_none(),
                "the wire refuses @{label:?}, check accepts it"
            );
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn every_member_dataset_the_config_checker_accepts_round_trips_and_every_one_the_wire_refuses_it_refuses(
) {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let member = if rng.below(4) == 0 {
            rng.long(240, 270, true)
        } else {
            rng.name()
        };
        // Whether it exists is the planner's business; the name is the config checker's.
        let parsed = config::parse(&config_text("b2", RECEIVER, &member)).ok();
        let stand_in = Request::Inventory(InventoryRequest {
            root: DatasetName::parse("qa").unwrap(),
        });
        let wire_ok = decode_request(&spliced(&stand_in, &[("qa", &member)])).is_ok();
        if let Some((config, _)) = &parsed {
            accepted += 1;
            assert!(
                wire_ok,
                "the config checker accepts {member:?}, the wire refuses it"
            );
            let crate::config::MemberName::Dataset(d) = &config.groups[0].members[0].name else {
                panic!("a datasets group holds datasets");
            };
            assert_eq!(d.as_str(), member);
            assert_round_trips(Request::Inventory(InventoryRequest { root: d.clone() }));
        } else {
            refused += 1;
        }
        if !wire_ok {
            assert!(
                parsed.is_none(),
                "the wire refuses {member:?}, the config checker accepts it"
            );
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
