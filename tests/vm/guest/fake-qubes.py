#!/usr/bin/python3
"""Edits the Qubes part of a fake-system state file (dom0.json, tests/fake-system/README.md) for
the driver cases: the fixture's qubes are real ZFS datasets; only qubesd-query, xl and qrexec are
fake. Only the `qubes` section is touched (real `zfs` is used, the `zfs` section is not read).

  fake-qubes.py <dom0.json> receiver <qube>            add the backup qube (AppVM, Running) and
                                                       the policy rule @adminvm -> qube allow
  fake-qubes.py <dom0.json> state <qube> Running|Halted [domid]
                                                       Running also lists its rw volumes as xl disks
"""
import json
import os
import sys

path, cmd, *args = sys.argv[1:]
with open(path) as fh:
    d = json.load(fh)
q = d.setdefault("qubes", {})
doms = q.setdefault("domains", {})

if cmd == "receiver":
    (qube,) = args
    doms.setdefault(qube, {"class": "AppVM", "state": "Running", "domid": 40,
                           "properties": {"template": "fedora-41"}, "volumes": []})
    doms[qube]["state"] = "Running"
    rule = {"service": "zfsbackup.Receive", "source": "@adminvm", "target": qube,
            "action": "allow"}
    pol = q.setdefault("policy", [])
    if rule not in pol:
        pol.append(rule)
elif cmd == "state":
    qube, state, *rest = args
    dom = doms[qube]
    dom["state"] = state
    if state == "Running":
        dom["domid"] = int(rest[0]) if rest else dom.get("domid", 30)
        vdevs = iter("xvd" + c for c in "abcdefgh")
        dom["disks"] = [{"pdev_path": "/dev/zvol/" + v["vid"], "vdev": next(vdevs),
                         "readwrite": bool(v.get("rw"))}
                        for v in dom.get("volumes", []) if v.get("pool") != "linux-kernel"]
    else:
        dom.pop("disks", None)
        dom.pop("domid", None)
else:
    sys.exit(f"fake-qubes.py: unknown command {cmd}")

tmp = path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(d, fh, indent=2, sort_keys=True)
    fh.write("\n")
os.replace(tmp, path)
