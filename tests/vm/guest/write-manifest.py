#!/usr/bin/python3
"""Writes the fixture manifests (called by fixture.sh inside the VM).

1. dom0.json: the state format of tests/fake-system (src/state.rs, `HostFile`): the Qubes admin
   data for the fixture's qubes (so the fake qubesd-query can serve them with
   QZB_FAKE_ROOT=<dir>) plus the real pool's datasets/snapshots with their real guids and txgs.
2. fixture-manifest.json: our own description: the qubes, the volumes' vids and the sha256 /
   blake3 of every volume, volume snapshot and dom0 file, as created.
"""
import argparse
import json
import os

p = argparse.ArgumentParser()
p.add_argument("--hashes", required=True)
p.add_argument("--zfs-list", required=True)
p.add_argument("--clean", required=True)
p.add_argument("--dvm-clean", required=True)
p.add_argument("--zfs-version", required=True)
p.add_argument("--out", required=True, help="fixture-manifest.json path; dom0.json goes beside it")
a = p.parse_args()

CONTAINER = "mainpool/qubes"
POOL = "zfs-main"

# name type origin createtxg guid volsize used referenced creation
rows = {}
for line in open(a.zfs_list):
    f = line.rstrip("\n").split("\t")
    rows[f[0]] = dict(type=f[1], origin=f[2], createtxg=int(f[3]), guid=int(f[4]),
                      volsize=None if f[5] == "-" else int(f[5]), used=int(f[6]),
                      referenced=int(f[7]), creation=int(f[8]))
fdir = os.path.dirname(a.zfs_list)
# Locally set properties (name, property, value), as the fake's "props".
local_props = {}
IGNORED_PROPS = {"snapdev"}
for line in open(os.path.join(fdir, "zfs-local-props.tsv")):
    n, prop, val = line.rstrip("\n").split("\t")
    if prop not in IGNORED_PROPS and "@" not in n:
        local_props.setdefault(n, {})[prop] = val
# Real `zfs send -nP` estimates: snapshot, full, incremental (from the previous snapshot/origin).
send_sizes = {}
for line in open(os.path.join(fdir, "send-sizes.tsv")):
    n, full, incr = line.rstrip("\n").split("\t")
    send_sizes[n] = (int(full), None if incr == "-" else int(incr))

hashes = {}
for line in open(a.hashes):
    sha, b3, kind, name = line.rstrip("\n").split(" ", 3)
    hashes[name] = {"type": kind, "sha256": sha, "blake3": b3}

# class, state, properties; volumes: (name, save_on_stop, snap_on_start, rw, ephemeral, source)
T = "TemplateVM"
qubes = {
    "fedora-41": (T, "Halted", {}, [
        ("root", True, False, True, False, None),
        ("private", True, False, True, False, None),
        ("volatile", False, False, True, False, None)]),
    "work": ("AppVM", "Running", {"template": "fedora-41"}, [
        ("root", False, True, True, False, f"{CONTAINER}/fedora-41/root"),
        ("private", True, False, True, False, None),
        ("volatile", False, False, True, False, None)]),
    "vault": ("AppVM", "Halted", {"template": "fedora-41"}, [
        ("root", False, True, True, False, f"{CONTAINER}/fedora-41/root"),
        ("private", True, False, True, False, None),
        ("volatile", False, False, True, False, None)]),
    "default-dvm": ("AppVM", "Halted", {"template": "fedora-41", "template_for_dispvms": "True"}, [
        ("root", False, True, True, False, f"{CONTAINER}/fedora-41/root"),
        ("private", True, False, True, False, None),
        ("volatile", False, False, True, False, None)]),
    "disp4242": ("DispVM", "Running", {"template": "default-dvm", "auto_cleanup": "True"}, [
        ("root", False, True, True, False, f"{CONTAINER}/fedora-41/root"),
        ("private", False, True, True, False, f"{CONTAINER}/default-dvm/private"),
        ("volatile", False, False, True, True, None)]),
    "personal": ("StandaloneVM", "Halted", {}, [
        ("root", True, False, True, False, None),
        ("private", True, False, True, False, None),
        ("volatile", False, False, True, False, None)]),
}
KERNEL_VID = "6.12.43-1.fc41"

# ---------------------------------------------------------------- fake-system dom0.json
domains = {}
own = {}
for name, (klass, state, props, vols) in qubes.items():
    vlist = []
    ovols = []
    for (vname, sos, soo, rw, eph, source) in vols:
        vid = f"{CONTAINER}/{name}/{vname}"
        r = rows[vid]
        v = {"name": vname, "pool": POOL, "vid": vid, "size": r["volsize"], "usage": r["used"],
             "rw": rw, "save_on_stop": sos, "snap_on_start": soo, "revisions_to_keep": 1,
             "ephemeral": eph}
        if source:
            v["source"] = source
        vlist.append(v)
        ov = dict(v)
        ov["origin"] = None if r["origin"] == "-" else r["origin"]
        ov["snapshots"] = sorted(s.split("@", 1)[1] for s in rows if s.startswith(vid + "@"))
        if vid in hashes:  # the hash table is empty in CI's default (lean) run
            ov["sha256"] = hashes[vid]["sha256"]
            ov["blake3"] = hashes[vid]["blake3"]
        ovols.append(ov)
    kernel = {"name": "kernel", "pool": "linux-kernel", "vid": KERNEL_VID, "size": 0, "usage": 0,
              "rw": False, "save_on_stop": False, "snap_on_start": False, "revisions_to_keep": 0,
              "ephemeral": False}
    if klass != "StandaloneVM":
        vlist.append(kernel)
        ovols.append(kernel)
    d = {"class": klass, "state": state, "volumes": vlist}
    if props:
        d["properties"] = props
    domains[name] = d
    own[name] = {"class": klass, "state": state, "properties": props, "volumes": ovols}
domains["dom0"] = {"class": "AdminVM", "state": "Running"}
own["dom0"] = {"class": "AdminVM", "state": "Running", "properties": {}, "volumes": [],
               "zfs_filesystem": "mainpool/dom0"}

def fake_datasets(pool):
    """The fake-system `zfs.datasets` map for one pool, from the real `zfs list`."""
    datasets = {}
    for name, r in rows.items():
        if "@" in name or not (name == pool or name.startswith(pool + "/")):
            continue
        ds = {"type": r["type"], "createtxg": r["createtxg"], "guid": r["guid"], "used": r["used"],
              "referenced": r["referenced"]}
        if r["origin"] != "-":
            ds["origin"] = r["origin"]
        if r["volsize"] is not None:
            ds["volsize"] = r["volsize"]
        if name in local_props:
            ds["props"] = local_props[name]
        snaps = [(s, rows[s]) for s in rows if s.startswith(name + "@")]
        snaps.sort(key=lambda x: x[1]["createtxg"])
        out = []
        for s, sr in snaps:
            e = {"name": s.split("@", 1)[1], "createtxg": sr["createtxg"], "guid": sr["guid"],
                 "used": sr["used"], "creation": sr["creation"]}
            if s in send_sizes:
                e["size"] = send_sizes[s][0]
                if send_sizes[s][1] is not None:
                    e["incr_size"] = send_sizes[s][1]
            out.append(e)
        if out:
            ds["snapshots"] = out
        datasets[name] = ds
    return datasets


last_txg = max(r["createtxg"] for r in rows.values())
datasets = fake_datasets("mainpool")

dom0 = {
    "comment": f"Generated by tests/vm/guest/fixture.sh from a real pool ({a.zfs_version}).",
    "zfs": {"last_txg": last_txg, "datasets": datasets},
    "qubes": {
        "release": "4.2",
        "pools": {
            POOL: {"config": {"driver": "zfs", "container": CONTAINER, "revisions_to_keep": "1",
                              "ephemeral_volatile": "False"}},
            "linux-kernel": {"config": {"driver": "linux-kernel",
                                        "dir_path": "/var/lib/qubes/vm-kernels"}},
        },
        "domains": domains,
    },
}
outdir = os.path.dirname(a.out)
with open(os.path.join(outdir, "dom0.json"), "w") as fh:
    json.dump(dom0, fh, indent=2, sort_keys=True)
    fh.write("\n")
# The backup qube's ZFS state (backuppool with the receiver dataset), same format:
# copy it to <state-root>/qubes/<backup qube>.json.
backup = {
    "comment": f"Backup qube pool, generated by tests/vm/guest/fixture.sh ({a.zfs_version}).",
    "zfs": {"last_txg": last_txg, "datasets": fake_datasets("backuppool")},
}
with open(os.path.join(outdir, "backup-qube.json"), "w") as fh:
    json.dump(backup, fh, indent=2, sort_keys=True)
    fh.write("\n")

manifest = {
    "format": "qzb-vm-fixture/1",
    "zfs_version": a.zfs_version,
    "pool": {"name": POOL, "driver": "zfs", "container": CONTAINER},
    "backup": {"pool": "backuppool", "receiver_dataset": "backuppool/backups/mydesktop"},
    "clean_snapshot": a.clean,
    "dvm_clean_snapshot": a.dvm_clean,
    "qubes": own,
    "hashes": hashes,
}
with open(a.out, "w") as fh:
    json.dump(manifest, fh, indent=2, sort_keys=True)
    fh.write("\n")
print(f"wrote {a.out} and {os.path.join(outdir, 'dom0.json')}")
