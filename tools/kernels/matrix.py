"""`make kernels`: run the kernel tier, attach/detach and a short lab on each kernel of a matrix.

Row `host` runs tools/kernels/guest.py on this machine's kernel. Every other row
boots a Debian kernel under qemu (KVM where it works, software emulation
otherwise): the host's / is shared read-only over virtiofs and becomes the
guest's root under a tmpfs overlay, so the project and its virtualenv are there
as they are here; the row's output directory, build/kernels/<row>/, is shared
writable. The kernel package comes from Debian's registry (apt-get download),
its modules are bound on the guest's /lib/modules. Each row leaves result.json,
guest.log, console.log and verifier/ in its directory; this script prints the
rows and writes build/kernels/matrix.md and matrix.json (rows not run this
time stay there from their last run).

    python tools/kernels/matrix.py [--rows host,6.1] [--soak SECONDS]

With --soak, a row runs only tests/integration/test_soak.py (make soak).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "kernels"
GUEST_TMPFS = (Path("/tmp"), Path("/run"))  # noqa: S108 (not used: each guest mounts a fresh tmpfs there, init.sh)
# row -> Debian package of its kernel (unsigned: the same image without the Secure Boot signature)
KERNELS = {
    "6.1": "linux-image-6.1.0-56-cloud-amd64-unsigned",
    "6.12": "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
}
# what the initramfs loads to mount the shares; built-in where modules.builtin says so
BOOT_MODULES = ("virtio_pci", "virtiofs", "overlay")
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
MEMORY = "3G"
# software emulation runs the guest some 10 times slower: the tests' waits stretch by this much
GUEST_TIME_SCALE = 4.0
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MatrixError(Exception):
    """A row could not be set up or did not finish; the message says which and why."""


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if res.returncode:
        raise MatrixError(f"`{shlex.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res  # type: ignore[no-any-return]


def fetch_kernel(row: str) -> tuple[Path, Path, str]:
    """Download and extract the row's kernel package once: (vmlinuz, lib/modules, version)."""
    package = KERNELS[row]
    tree = OUT / "cache" / package
    if not (tree / ".extracted").exists():
        (OUT / "cache").mkdir(parents=True, exist_ok=True)
        debs = list((OUT / "cache").glob(f"{package}_*.deb"))
        if not debs:
            run(["apt-get", "download", package], cwd=OUT / "cache")
            debs = list((OUT / "cache").glob(f"{package}_*.deb"))
        shutil.rmtree(tree, ignore_errors=True)
        run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        version = next((tree / "lib" / "modules").iterdir()).name
        run(["busybox", "depmod", "-b", str(tree), version])
        (tree / ".extracted").touch()
    version = next((tree / "lib" / "modules").iterdir()).name
    return tree / "boot" / f"vmlinuz-{version}", tree / "lib" / "modules", version


def boot_modules(modules: Path) -> list[str]:
    """The module files BOOT_MODULES need, dependencies first (relative to modules/)."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    builtin = (modules / "modules.builtin").read_text().split()
    order: list[str] = []

    def add(path: str) -> None:
        for dep in deps[path]:
            add(dep)
        if path not in order:
            order.append(path)

    for module in BOOT_MODULES:
        found = [p for p in deps if Path(p).name.split(".ko")[0] == module]
        if not found and not any(Path(b).name.split(".ko")[0] == module for b in builtin):
            raise MatrixError(f"kernel in {modules} has no module {module}")
        for path in found:
            add(path)
    return order


def initramfs(modules: Path, version: str, dest: Path) -> None:
    """A gzipped newc cpio: busybox, init.sh as /init, the boot modules and their load order."""
    with tempfile.TemporaryDirectory(prefix="kmatrix-initrd-") as tmp:
        root = Path(tmp)
        for sub in ("bin", "modules", "proc", "sys", "dev"):
            (root / sub).mkdir()
        busybox = shutil.which("busybox")
        if not busybox:
            raise MatrixError("no busybox: apt-get install busybox-static")
        shutil.copy(busybox, root / "bin" / "busybox")
        shutil.copy(Path(__file__).with_name("init.sh"), root / "init")
        (root / "init").chmod(0o755)
        order = boot_modules(modules / version)
        for path in order:
            shutil.copy(modules / version / path, root / "modules" / Path(path).name)
        (root / "boot-modules").write_text("\n".join(Path(p).name for p in order) + "\n")
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
        cpio = subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], cwd=root, input=files.encode(),
                              capture_output=True, check=True).stdout
        dest.write_bytes(subprocess.run(["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout)


def guest_command(out: Path, soak: int, time_scale: float) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tools" / "kernels" / "guest.py"),
            "--out", str(out), "--soak", str(soak), "--time-scale", str(time_scale)]


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise MatrixError(f"{what} did not start (see its log)")
        time.sleep(0.05)


def boot(row: str, out: Path, soak: int, timeout: int) -> None:
    """Boot the row's kernel with guest.py as its job; returns when the guest powered off."""
    vmlinuz, modules, version = fetch_kernel(row)
    for name in ("exit-code", "result.json", "console.log", "guest.log", "virtiofsd.log"):
        (out / name).unlink(missing_ok=True)
    (out / "run.sh").write_text(f"export PATH={GUEST_PATH} HOME=/root\ncd {shlex.quote(str(ROOT))}\n"
                                f"exec {shlex.join(guest_command(out, soak, GUEST_TIME_SCALE))}\n")
    with tempfile.TemporaryDirectory(prefix="kmatrix-") as tmp:
        initrd, socks = Path(tmp) / "initrd.gz", [Path(tmp) / "host.sock", Path(tmp) / "out.sock"]
        initramfs(modules, version, initrd)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for sock, source in zip(socks, ("/", str(out)), strict=True):
                procs.append(start([str(VIRTIOFSD), f"--socket-path={sock}", "-o", f"source={source}",
                                    "-o", "cache=always" if source == "/" else "cache=none",
                                    "-o", "sandbox=chroot"], out / "virtiofsd.log"))
                wait_for(sock, procs[-1], f"virtiofsd for {source}")
            append = (f"console=ttyS0 panic=-1 quiet loglevel=4 kmatrix.out={out} "
                      f"kmatrix.modules={modules}")
            qemu = [
                "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2",
                "-m", MEMORY, "-object", f"memory-backend-memfd,id=mem,size={MEMORY},share=on",
                "-numa", "node,memdev=mem", "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append,
                "-display", "none", "-monitor", "none", "-serial", f"file:{out / 'console.log'}", "-no-reboot",
                *[a for i, s in enumerate(socks) for a in (
                    "-chardev", f"socket,id=fs{i},path={s}",
                    "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={('host', 'out')[i]}")],
            ]
            procs.append(start(qemu, out / "qemu.log"))
            try:
                procs[-1].wait(timeout)
            except subprocess.TimeoutExpired as exc:
                raise MatrixError(f"row {row}: the guest did not finish in {timeout} s "
                                  f"(see {out}/console.log)") from exc
        finally:
            for proc in reversed(procs):
                stop(proc)


def run_row(row: str, soak: int, timeout: int) -> dict[str, object]:
    """One row: its result.json as a dict, with `row`, `seconds` and `error` added."""
    out = OUT / ((f"host-{platform.release()}" if row == "host" else row) + ("-soak" if soak else ""))
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    error = ""
    try:
        if row == "host":
            with (out / "guest.log").open("w") as log:
                subprocess.run(guest_command(out, soak, 1.0), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               check=False)
        else:
            boot(row, out, soak, timeout)
    except MatrixError as exc:
        error = str(exc)
    result: dict[str, object] = {}
    if (out / "result.json").exists():
        result = json.loads((out / "result.json").read_text())
    elif not error:
        tail = (out / "console.log").read_text(errors="replace")[-2000:] if (out / "console.log").exists() else ""
        error = f"row {row}: no result.json (guest.log and console.log in {out}); console ends:\n{tail}"
    return {"row": row, "dir": str(out.relative_to(ROOT)), "accel": "none (host)" if row == "host" else "tcg",
            "seconds": round(time.monotonic() - began), "error": error, **result}


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| row | kernel | accel | mode | GSO copies | passed | failed | skipped | dmesg | soak | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        soak = r.get("soak") or {}
        soak_text = (f"{soak['seconds']} s, {soak['mirrored']} mirrored, {soak['copies']} copies"
                     if isinstance(soak, dict) and soak else "-")
        lines.append(f"| {r['row']} | {r.get('kernel', '?')} | {r.get('accel', '?')} | {r.get('mode', '?')} "
                     f"| {r.get('gso_path', '-')} "
                     f"| {r.get('passed', 0)} | {r.get('failed', 0)} | {r.get('skipped', 0)} "
                     f"| {r.get('dmesg', '?')} | {soak_text} | {r['seconds']} |")
    out = ["# Kernel matrix", "", *lines, ""]
    for r in rows:
        if r.get("error"):
            out.append(f"- {r['row']}: ERROR {r['error']}")
        for reason, count in sorted(dict(r.get("skip_reasons") or {}).items()):  # type: ignore[call-overload]
            out.append(f"- {r['row']}: {count} skipped: {reason}")
        for name in r.get("failures") or []:  # type: ignore[attr-defined]
            out.append(f"- {r['row']}: FAILED {name}")
    out += ["", "## Verifier (processed instructions of 1,000,000; total states; stack depth)", "",
            "| row | object | program | insns | states | stack | error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for p in r.get("verifier") or []:  # type: ignore[attr-defined]
            out.append(f"| {r['row']} | {p['object']} | {p['program']} | {p['insns']} | {p['total_states']} "
                       f"| {p['stack_depth']} | {p['error'] or ''} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="host,6.1", help=f"comma-separated: host and any of {', '.join(KERNELS)}")
    ap.add_argument("--soak", type=int, default=0,
                    help="instead of the tests, mirror for this many seconds in each row (0: the tests)")
    ap.add_argument("--timeout", type=int, default=2400, help="seconds a guest may take, beyond the soak")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r != "host" and r not in KERNELS]
    if unknown:
        print(f"kernels: unknown row(s) {', '.join(unknown)} in --rows; known: host, {', '.join(KERNELS)}",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("kernels: needs root (BPF, namespaces, virtiofsd)", file=sys.stderr)
        return 2
    hidden = next((d for d in GUEST_TMPFS if ROOT.is_relative_to(d)), None)
    if hidden is not None and any(r != "host" for r in rows):
        print(f"kernels: the checkout {ROOT} is under {hidden}, which each guest mounts a fresh tmpfs on, so a guest "
              "would not see it; clone it elsewhere (e.g. under /var/tmp) and run make kernels there", file=sys.stderr)
        return 2
    results = []
    for row in rows:
        print(f"kernels: row {row} ...", flush=True)
        result = run_row(row, args.soak, args.timeout + args.soak)
        results.append(result)
        print(f"kernels: row {row}: {result.get('passed', 0)} passed, {result.get('failed', 0)} failed, "
              f"{result.get('skipped', 0)} skipped in {result['seconds']} s; GSO copies "
              f"{result.get('gso_path', '-')}"
              + (f"; ERROR {result['error']}" if result["error"] else ""), flush=True)
    # rows run before and not now stay in the tables (each with its own `seconds` and kernel)
    earlier = json.loads((OUT / "matrix.json").read_text()) if (OUT / "matrix.json").exists() else []
    every = [r for r in earlier if r["row"] not in rows] + results
    (OUT / "matrix.json").write_text(json.dumps(every, indent=2) + "\n")
    (OUT / "matrix.md").write_text(table(every))
    print(table(results))
    bad = [r for r in results if r["error"] or r.get("failed") or r.get("dmesg") != "clean" or not r.get("passed")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
