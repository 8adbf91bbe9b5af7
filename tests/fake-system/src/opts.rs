//! Minimal getopt with permutation (like glibc's), enough for zfs/xl/qrexec argv.

pub struct Parsed {
    pub flags: Vec<(char, Option<String>)>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn has(&self, c: char) -> bool {
        self.flags.iter().any(|(f, _)| *f == c)
    }
    pub fn values(&self, c: char) -> Vec<String> {
        self.flags
            .iter()
            .filter(|(f, _)| *f == c)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }
    pub fn last(&self, c: char) -> Option<String> {
        self.values(c).pop()
    }
}

/// `with_arg`: option letters taking an argument; `no_arg`: plain flags.
/// Any other letter is an error (the caller reports it as unsupported).
pub fn getopt(args: &[String], with_arg: &str, no_arg: &str) -> Result<Parsed, String> {
    let mut p = Parsed {
        flags: Vec::new(),
        operands: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            p.operands.extend(args[i + 1..].iter().cloned());
            break;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                if with_arg.contains(c) {
                    let rest: String = chars[j + 1..].iter().collect();
                    let v = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("option -{c} needs an argument"))?
                    };
                    p.flags.push((c, Some(v)));
                    break;
                } else if no_arg.contains(c) {
                    p.flags.push((c, None));
                } else {
                    return Err(format!("unknown option -{c}"));
                }
                j += 1;
            }
        } else {
            p.operands.push(a.clone());
        }
        i += 1;
    }
    Ok(p)
}
