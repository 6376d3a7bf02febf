"""Outer reassembly (collector.reassembly), underlay frames (collector.underlay) and ``collect --read``.

Hand-built fragment lists for what no kernel sends (overlaps, duplicates,
contradicting ends, bad lengths, oversize, cut header chains) and for the
bounds (timeout, bytes and datagrams in flight). ``captures/test_reassembly/
kernel_fragments.pcap`` holds VXLAN datagrams the kernel fragmented on a
veth of MTU 1280 (IPv4 and IPv6, inner frames of 60, 3000 and 9000 bytes
made by ``inner`` below), recorded once with the namespaces, sender and
recorder of tests/integration/test_collector_capture.py (which records and
reads such a file afresh on every run, as root), so that ``--read`` is
tested on real fragments without root too.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, PadN
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from bpftap.collector import cli
from bpftap.collector.pcapng import read_pcapng
from bpftap.collector.reassembly import COUNTERS, Limits, Reassembler
from bpftap.collector.server import CollectorStats, format_summary
from bpftap.collector.underlay import PcapReader, underlay_for
from bpftap.tunnels import erspan, geneve, vxlan
from bpftap.tunnels.common import DecapError

CAPTURES = Path(__file__).parent / "captures" / "test_reassembly"
SRC4, DST4 = "198.18.5.1", "198.18.5.2"
SRC6, DST6 = "2001:db8:5::1", "2001:db8:5::2"


def udp(size: int, seed: int = 0) -> bytes:
    """A UDP datagram to port 4789 of `size` bytes (header included)."""
    return bytes(UDP(sport=5555, dport=4789, chksum=0) / Raw(bytes((seed + k) & 0xFF for k in range(size - 8))))


def frags(family: int, data: bytes, pieces: list[tuple[int, int]], ident: int = 7, *,
          last: int | None = None) -> list[bytes]:
    """IP packets carrying data[offset:offset+length] for each (offset, length); MF unless it ends at `last`."""
    end = len(data) if last is None else last
    out = []
    for offset, length in pieces:
        more = offset + length < end
        chunk = data[offset:offset + length]
        if family == 4:
            pkt = IP(src=SRC4, dst=DST4, id=ident, proto=17, flags="MF" if more else 0, frag=offset // 8) / Raw(chunk)
        else:
            pkt = IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=17, id=ident, offset=offset // 8,
                                                                m=int(more)) / Raw(chunk)
        out.append(bytes(pkt))
    return out


def even(size: int, step: int) -> list[tuple[int, int]]:
    return [(o, min(step, size - o)) for o in range(0, size, step)]


def feed_all(r: Reassembler, packets: list[bytes], now: float = 0.0) -> list[bytes]:
    return [d.payload for p in packets if (d := r.feed(p, now)) is not None]


def drops(r: Reassembler) -> dict[str, int]:
    return {k: v for k, v in r.counts.items() if v and k not in ("fragments", "reassembled")}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_any_order_reassembles(family: int, order: str) -> None:
    data = udp(5000)
    packets = frags(family, data, even(len(data), 1232))
    if order == "reversed":
        packets.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(packets)
    r = Reassembler()
    assert feed_all(r, packets) == [data]
    assert r.counts["fragments"] == len(packets) == 5 and r.counts["reassembled"] == 1
    assert drops(r) == {} and r.pending == (0, 0)


@pytest.mark.parametrize("family", [4, 6])
def test_whole_packets_pass_through_with_addresses(family: int) -> None:
    data = udp(100)
    ip = IP(src=SRC4, dst=DST4, proto=17) if family == 4 else IPv6(src=SRC6, dst=DST6, nh=17)
    pkt = bytes(ip / Raw(data))
    d = Reassembler().feed(pkt + b"\0" * 6, 0.0)  # Ethernet padding is cut by the length field
    assert d is not None and d.payload == data and d.proto == 17 and d.family == family
    assert d.source == (SRC4 if family == 4 else SRC6)


def test_ipv6_atomic_fragment_and_extension_headers() -> None:
    data = udp(64)
    atomic = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=17, id=1, offset=0, m=0) / Raw(data))
    r = Reassembler()
    assert feed_all(r, [atomic]) == [data] and r.counts["fragments"] == 0
    # a destination options header inside the fragmentable part is skipped on reassembly
    opts = bytes(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\0" * 4)]))
    body = opts + data + bytes(200)
    packets = [bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=2, offset=0, m=1) / Raw(body[:80])),
               bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=2, offset=10, m=0) / Raw(body[80:]))]
    got = r.feed(packets[1], 0.0) or r.feed(packets[0], 0.0)
    assert got is not None and got.proto == 17 and got.payload == data + bytes(200)


@pytest.mark.parametrize("family", [4, 6])
def test_duplicates_are_ignored(family: int) -> None:
    data = udp(2000)
    pieces = [(0, 512), (0, 512), (0, 256), (1024, 976), (1024, 976), (512, 512)]
    r = Reassembler()
    assert feed_all(r, frags(family, data, pieces)) == [data]
    assert drops(r) == {"duplicate": 3}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("pieces", "late"), [
    ([(0, 512), (504, 512), (1016, 984)], 1),  # overlaps the end of the one before
    ([(512, 512), (0, 520), (1024, 976)], 1),  # overlaps the start of the one after
    ([(0, 512), (1024, 976), (256, 1024)], 0),  # spans a hole and both neighbours
    ([(0, 512), (512, 512), (0, 1024 + 8)], 0),  # covers two held ones and 8 bytes more
])
def test_any_overlap_discards_the_datagram(family: int, pieces: list[tuple[int, int]], late: int) -> None:
    data = udp(2000)
    r = Reassembler()
    assert feed_all(r, frags(family, data, pieces)) == []
    assert drops(r) == {"overlap": 1} | ({"late": late} if late else {})
    # later fragments of the discarded datagram, even the missing ones, are dropped as late
    late = r.counts["late"]
    assert feed_all(r, frags(family, data, [(0, 512), (512, 512), (1024, 976)])) == []
    assert r.counts["late"] == late + 3 and r.counts["overlap"] == 1 and r.pending == (0, 0)


@pytest.mark.parametrize("family", [4, 6])
def test_contradicting_ends_discard_the_datagram(family: int) -> None:
    data = udp(2000)
    r = Reassembler()
    # two last fragments ending at different places
    assert feed_all(r, frags(family, data, [(1024, 976)]) + frags(family, data, [(1024, 800)], last=1824)) == []
    assert drops(r) == {"conflict": 1}
    # data past the end the last fragment set
    past = frags(family, udp(4000), [(2000, 512)], ident=8)
    assert feed_all(r, frags(family, data, [(1024, 976)], ident=8) + past) == []
    assert drops(r) == {"conflict": 2}


@pytest.mark.parametrize("family", [4, 6])
def test_bad_lengths_drop_the_fragment(family: int) -> None:
    data = udp(2000)
    r = Reassembler()
    assert feed_all(r, frags(family, data, [(0, 500), (0, 0)], last=2000)) == []  # MF with 500 bytes; empty
    assert drops(r) == {"bad-length": 2}
    assert feed_all(r, frags(family, data, [(0, 504), (504, 1496)])) == [data]  # the datagram is still whole


@pytest.mark.parametrize("family", [4, 6])
def test_too_big_discards(family: int) -> None:
    data = bytes(65600)
    r = Reassembler()
    assert feed_all(r, frags(family, data, [(65520, 80), (0, 1024)], last=65600)) == []
    assert drops(r) == {"too-big": 1, "late": 1}


def test_ipv6_first_fragment_must_hold_the_header_chain() -> None:
    r = Reassembler()
    # destination options of 16 bytes, but the first fragment carries only 8 of them
    opts = bytes(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\0" * 12)]))
    assert len(opts) == 16
    body = opts + udp(100)
    first = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=3, offset=0, m=1) / Raw(body[:8]))
    rest = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=3, offset=1, m=0) / Raw(body[8:]))
    assert feed_all(r, [first, rest]) == []
    assert drops(r) == {"incomplete-chain": 1, "late": 1}
    # the chain complete but no byte of the UDP header: also incomplete
    hdr = bytes(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\0" * 4)]))
    assert len(hdr) == 8
    first = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=5, offset=0, m=1) / Raw(hdr))
    assert feed_all(r, [first]) == [] and r.counts["incomplete-chain"] == 2


@pytest.mark.parametrize("family", [4, 6])
def test_timeout_drops_incomplete_datagrams(family: int) -> None:
    data = udp(2000)
    r = Reassembler(Limits(timeout=30))
    first, second = frags(family, data, [(0, 1024), (1024, 976)])
    assert r.feed(first, 100.0) is None and r.pending == (1, 1024)
    r.expire(129.9)
    assert r.pending == (1, 1024)
    r.expire(130.0)
    assert drops(r) == {"timeout": 1} and r.pending == (0, 0)
    # the rest arrives too late: a new datagram that also times out
    assert r.feed(second, 131.0) is None
    assert r.feed(first, 170.0) is None  # expired on the way in: 170 >= 131 + 30
    assert drops(r) == {"timeout": 2} and r.pending == (1, 1024)


def test_discarded_datagrams_are_forgotten_at_their_timeout() -> None:
    data = udp(2000)
    r = Reassembler(Limits(timeout=30))
    feed_all(r, frags(4, data, [(0, 1024), (512, 1024)]), now=0.0)
    assert drops(r) == {"overlap": 1}
    r.expire(31.0)  # the discarded datagram goes without counting as a timeout
    assert feed_all(r, frags(4, data, [(0, 1024), (1024, 976)]), now=31.0) == [data]
    assert drops(r) == {"overlap": 1}


def test_bytes_in_flight_are_bounded_oldest_first() -> None:
    r = Reassembler(Limits(max_bytes=3000))
    data = udp(1100)
    firsts = [frags(4, data, [(0, 1024)], ident=i)[0] for i in range(3)]
    for i, p in enumerate(firsts):
        assert r.feed(p, float(i)) is None
    assert drops(r) == {"evicted": 1} and r.pending == (2, 2048)
    # datagram 0 went; 1 and 2 still complete, and 0's last fragment starts a new one
    assert feed_all(r, [frags(4, data, [(1024, 76)], ident=i)[0] for i in (1, 2, 0)]) == [data, data]
    assert r.pending == (1, 76)


def test_a_datagram_bigger_than_the_bound_evicts_itself() -> None:
    r = Reassembler(Limits(max_bytes=1500))
    data = udp(2000)
    assert feed_all(r, frags(4, data, [(0, 1024), (1024, 976)][::-1])) == []
    assert drops(r) == {"evicted": 1} and r.pending == (0, 0)


def test_datagrams_in_flight_are_bounded_oldest_first() -> None:
    r = Reassembler(Limits(max_datagrams=2))
    data = udp(2000)
    for i in range(3):
        r.feed(frags(6, data, [(0, 1024)], ident=i)[0], 0.0)
    assert drops(r) == {"evicted": 1} and r.pending == (2, 2048)


@pytest.mark.parametrize(("packet", "reason"), [
    (b"", "short"),
    (b"\x45" + bytes(10), "short"),
    (b"\x55" + bytes(30), "version"),
    (bytes(IP(src=SRC4, dst=DST4) / Raw(b"x" * 20))[:30], "short"),  # total length past the end
    (b"\x44" + bytes(19), "header"),  # IHL 16 bytes
    (bytes(IP(src=SRC4, dst=DST4, chksum=1) / Raw(b"x")), "checksum"),
    (bytes(IPv6(src=SRC6, dst=DST6, plen=100, nh=17))[:60], "short"),
    (bytes(IPv6(src=SRC6, dst=DST6, nh=60) / Raw(b"\x11\x05" + bytes(6))), "header"),  # options of 48 bytes, 8 there
    (bytes(IPv6(src=SRC6, dst=DST6, nh=60) / Raw(b"\x3c\x00" + bytes(6))), "header"),  # chain goes on past the end
    (bytes(IPv6(src=SRC6, dst=DST6, nh=60) / Raw((b"\x3c\x00" + bytes(6)) * 9)), "ext-headers"),
    (bytes(IPv6(src=SRC6, dst=DST6, nh=44) / Raw(b"\x11\x00\x00")), "header"),  # fragment header cut
])
def test_malformed_headers_name_the_reason(packet: bytes, reason: str) -> None:
    with pytest.raises(DecapError) as info:
        Reassembler().feed(packet, 0.0)
    assert info.value.tunnel == "ip" and info.value.reason == reason


def test_every_counter_is_listed() -> None:
    assert list(Reassembler().counts) == list(COUNTERS)
    with pytest.raises(ValueError, match="positive"):
        Limits(timeout=0)


def eth(pkt: bytes, ethertype: int = 0x0800) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + ethertype.to_bytes(2, "big") + pkt


def test_underlay_picks_tunnels_and_ignores_the_rest() -> None:
    u = underlay_for("0.0.0.0", 4789, 6081, ["vxlan", "geneve", "gre"])
    vx = vxlan.encode(1, bytes(20))
    to = bytes(IP(src=SRC4, dst=DST4) / UDP(sport=999, dport=4789) / Raw(vx))
    assert u.payload(eth(to), 0.0) == ("vxlan", vx, SRC4, 999)
    tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=5) / Dot1Q(vlan=6)
                   / IPv6(src=SRC6, dst=DST6) / UDP(sport=998, dport=6081) / Raw(b"g" * 16))
    assert u.payload(tagged, 0.0) == ("geneve", b"g" * 16, SRC6, 998)
    gre = bytes(IP(src=SRC4, dst=DST4, proto=47) / Raw(b"\x00\x00\x65\x58" + bytes(14)))
    assert u.payload(eth(gre), 0.0) == ("gre", b"\x00\x00\x65\x58" + bytes(14), SRC4, 0)
    ignored = [bytes(Ether() / ARP()), eth(bytes(IP(src=SRC4, dst=DST4, proto=6) / Raw(bytes(20)))),
               eth(bytes(IP(src=SRC4, dst=DST4) / UDP(dport=53) / Raw(b"q"))), b"\x00" * 10]
    assert [u.payload(f, 0.0) for f in ignored] == [None] * 4 and u.ignored == 4
    bad_len = bytes(IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=4789, len=200) / Raw(vx))
    with pytest.raises(DecapError, match="UDP length 200"):
        u.payload(eth(bad_len), 0.0)


def test_underlay_filters_on_the_destination_and_tunnel_types() -> None:
    u = underlay_for("198.18.5.9", 4789, 6081, ["vxlan"])
    to_other = bytes(IP(src=SRC4, dst=DST4) / UDP(dport=4789) / Raw(vxlan.encode(1, bytes(20))))
    gre = bytes(IP(src=SRC4, dst="198.18.5.9", proto=47) / Raw(bytes(18)))
    geneve = bytes(IP(src=SRC4, dst="198.18.5.9") / UDP(dport=6081) / Raw(bytes(30)))
    assert [u.payload(eth(p), 0.0) for p in (to_other, gre, geneve)] == [None] * 3 and u.ignored == 3
    assert u.reassembler.counts["fragments"] == 0


def write_pcap(path: Path, frames: list[bytes], *, magic: int = 0xA1B2C3D4, endian: str = "<",
               linktype: int = 1) -> None:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack(endian + "IIII", 10, i, len(f), len(f)) + f
    path.write_bytes(out)


def test_pcap_reader_byte_orders_and_resolutions(tmp_path: Path) -> None:
    for magic, endian, ts in ((0xA1B2C3D4, "<", 10_000_001_000), (0xA1B23C4D, ">", 10_000_000_001)):
        write_pcap(tmp_path / "t.pcap", [b"a", b"bc"], magic=magic, endian=endian)
        reader = PcapReader(tmp_path / "t.pcap")
        assert list(reader) == [(10_000_000_000, b"a"), (ts, b"bc")]
        reader.close()


@pytest.mark.parametrize(("content", "message"), [
    (b"\x0a\x0d\x0d\x0a" + bytes(40), "pcapng, not classic pcap; convert it with 'editcap -F pcap"),
    (b"\xd4\xc3\xb2", "not a pcap file \\(3 bytes"),
    (bytes(24), "not a pcap file \\(magic 00000000\\)"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113), "link type 113; only Ethernet"),
])
def test_pcap_reader_refuses_other_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x.pcap").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        PcapReader(tmp_path / "x.pcap")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bpftap")
    cli.register(parser.add_subparsers())
    return parser.parse_args(["collect", *argv])


def inner(i: int, size: int) -> bytes:
    """The inner frames of kernel_fragments.pcap (as tests/integration/test_collector_capture.py makes them)."""
    head = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.1", dst="198.18.3.1", id=i)
    pkt = head / UDP(sport=1000 + i, dport=7000)
    return bytes(pkt / Raw(bytes((i + k) & 0xFF for k in range(size - len(pkt)))))


def test_read_kernel_fragments(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    args = parse(["--read", str(CAPTURES / "kernel_fragments.pcap"), "--out", str(tmp_path / "k.pcapng")])
    assert cli.run_collect(args, stdout=out, stderr=err) == 0, err.getvalue()
    want = [inner(i, s) for i, s in enumerate([60, 3000, 9000])] * 2
    got = read_pcapng(tmp_path / "k.pcapng")
    assert [f for _, f, _ in got] == want
    assert [c.split(" from=")[1].rsplit(":", 1)[0] for _, _, c in got if c] == [SRC4] * 3 + [f"[{SRC6}]"] * 3
    assert "reading frames of" in err.getvalue() and "(vxlan udp/4789" in err.getvalue()
    summary = out.getvalue()
    assert "captured:   24 frames, 0 ignored" in summary
    assert "reassembly: 22 fragments, 4 datagrams reassembled, 0 pending (0 bytes); dropped: none" in summary


def test_read_replays_timeouts_in_capture_time(tmp_path: Path) -> None:
    data = udp(2000)
    first, second = (eth(p) for p in frags(4, data, [(0, 1024), (1024, 976)]))
    path = tmp_path / "slow.pcap"
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for sec, f in ((100, first), (131, second)):  # 31 s apart: past the 30 s timeout
        out += struct.pack("<IIII", sec, 0, len(f), len(f)) + f
    path.write_bytes(out)
    stdout = io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "s.pcapng")]), stdout=stdout,
                           stderr=io.StringIO()) == 0
    assert "1 pending (976 bytes); dropped: timeout=1" in stdout.getvalue()
    stdout = io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "s.pcapng"), "--reasm-timeout", "60"]),
                           stdout=stdout, stderr=io.StringIO()) == 0
    assert "1 datagrams reassembled, 0 pending" in stdout.getvalue()


@pytest.mark.parametrize(("content", "message"), [
    (None, "read capture on .*missing.pcap: No such file"),
    (b"\x0a\x0d\x0d\x0a" + bytes(40), "read capture on .*x\\.pcap; pcapng, not classic pcap"),
])
def test_read_errors_exit_2_naming_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / ("missing.pcap" if content is None else "x.pcap")
    if content is not None:
        path.write_bytes(content)
    err = io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "o.pcapng")]),
                           stdout=io.StringIO(), stderr=err) == 2
    assert re.search(message, err.getvalue()), err.getvalue()


def test_a_record_cut_short_exits_1_with_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path, [eth(bytes(IP(src=SRC4, dst=DST4) / UDP(dport=4789) / Raw(vxlan.encode(1, bytes(20)))))])
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    out, err = io.StringIO(), io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "o.pcapng")]), stdout=out,
                           stderr=err) == 1
    assert "record header at offset" in err.getvalue() and "received:   1 datagrams, wrote 1 frames" in out.getvalue()


def test_interface_errors_name_the_interface(tmp_path: Path) -> None:
    err = io.StringIO()
    code = cli.run_collect(parse(["--interface", "no-such-if0", "--out", str(tmp_path / "o.pcapng")]),
                           stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert "no-such-if0" in err.getvalue() and ("CAP_NET_RAW" in err.getvalue() or "ip link" in err.getvalue())


def test_interface_and_read_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--interface", "eth0", "--read", "x.pcap", "--out", "o.pcapng"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_summary_shows_where_reassembly_happens() -> None:
    assert "reassembly: by the kernel" in format_summary(CollectorStats())
    stats = CollectorStats(captured=10, ignored=2, kernel_drops=3, pending=(1, 800),
                           reassembly={"fragments": 5, "reassembled": 2, "overlap": 1, "timeout": 0})
    text = format_summary(stats)
    assert "captured:   10 frames, 2 ignored (not tunnel traffic for this collector), 3 dropped by the kernel" in text
    assert "reassembly: 5 fragments, 2 datagrams reassembled, 1 pending (800 bytes); dropped: overlap=1" in text


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice < 0.7 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.85:
            del data[rng.randrange(len(data) + 1):]
        else:
            data += rng.randbytes(rng.randrange(64))
    return bytes(data)


def test_fuzzed_frames_raise_only_decap_errors_and_stay_in_bounds() -> None:
    """20,000 mutated fragment frames through one underlay: counted rejects only, memory bound kept."""
    rng = random.Random(0xF4A6)
    opts = bytes(IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b"\0" * 4)]))
    seeds = [eth(p) for fam in (4, 6) for p in frags(fam, udp(300), even(300, 96))]
    seeds += [eth(bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(nh=60, id=9, offset=0, m=1)
                        / Raw(opts + udp(40)[:24])), 0x86DD)]
    seeds += [bytes(Ether() / Dot1Q(vlan=3) / IP(src=SRC4, dst=DST4) / UDP(dport=4789)
                    / Raw(vxlan.encode(1, bytes(20))))]
    limits = Limits(timeout=5, max_bytes=4096, max_datagrams=16)
    u = underlay_for("0.0.0.0", 4789, 6081, ["vxlan", "geneve", "gre"], limits)
    reasons: set[str] = set()
    for i in range(20_000):
        frame = mutate(rng, rng.choice(seeds))
        try:
            u.payload(frame, i / 1000)
        except DecapError as exc:
            reasons.add(f"{exc.tunnel}:{exc.reason}")
        queued, held = u.reassembler.pending
        assert 0 <= held <= limits.max_bytes and queued <= limits.max_datagrams, frame.hex()
    assert reasons <= {f"ip:{r}" for r in ("short", "version", "header", "checksum", "ext-headers")} | {"udp:length"}
    assert u.reassembler.counts["fragments"] > 1000


def test_read_fragmented_geneve_and_erspan(tmp_path: Path) -> None:
    """GENEVE over IPv4 and ERSPAN III over IPv6, both fragmented, out of order, through ``--read``."""
    one, two = inner(1, 3000), inner(2, 2500)
    gen = geneve.encode(5, one, direction=1, ifindex=3, seq=1)
    gen_udp = bytes(UDP(sport=4444, dport=6081, chksum=0) / Raw(gen))
    ers = erspan.encode3(9, two, seq=1, direction=2, ifindex=4, timestamp_ns=0)
    frames = [eth(p) for p in frags(4, gen_udp, even(len(gen_udp), 1480), ident=11)[::-1]]
    for offset, length in even(len(ers), 1232):
        more = offset + length < len(ers)
        header = IPv6ExtHdrFragment(nh=47, id=12, offset=offset // 8, m=int(more))
        frames.append(eth(bytes(IPv6(src=SRC6, dst=DST6) / header / Raw(ers[offset:offset + length])), 0x86DD))
    write_pcap(tmp_path / "g.pcap", frames)
    out = io.StringIO()
    assert cli.run_collect(parse(["--read", str(tmp_path / "g.pcap"), "--out", str(tmp_path / "g.pcapng")]),
                           stdout=out, stderr=io.StringIO()) == 0
    got = read_pcapng(tmp_path / "g.pcapng")
    assert [(f, c) for _, f, c in got] == [
        (one, f"tunnel=geneve vni=5 seq=1 dir=ingress if=3 from={SRC4}:4444"),
        (two, f"tunnel=erspan3 session=9 seq=1 dir=egress if=4 ts=0.000000000 from={SRC6}"),
    ]
    assert f"{len(frames)} fragments, 2 datagrams reassembled" in out.getvalue()


def test_underlay_for_gre_only_ignores_udp_before_reassembly() -> None:
    u = underlay_for("0.0.0.0", 4789, 6081, ["erspan3"])
    first = frags(4, udp(2000), [(0, 1024)])[0]
    assert u.payload(eth(first), 0.0) is None and u.ignored == 1 and u.reassembler.counts["fragments"] == 0
