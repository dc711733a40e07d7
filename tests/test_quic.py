"""QUIC Initial decoding: RFC 9001 / RFC 9369 vectors, real captures, crafted packets, fuzzing."""
from __future__ import annotations

import hmac
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.quic import QUIC_V1, QUIC_V2, QuicClientHelloTracker, client_initial_keys, is_quic_initial
from sensor.decode.tls import ClientHello
from sensor.records import Counters

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 Appendix A.2: the client's protected Initial packet (1200 bytes, packet number 2).
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

# RFC 9369 Appendix A.2: the same ClientHello in a QUIC v2 Initial.
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

QUIC_CAPTURES = [
    "quic-ietf__input.pcap",
    "quic-frag__input.pcap",
    "quic-frag-unordered__input.pcap",  # raw IP link type, CRYPTO frames out of order
    "quic-retry__input.pcap",
]


# -- a test-only Initial packet builder, the mirror image of the decoder --------------------------


def _varint(value: int) -> bytes:
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            encoded = bytearray(value.to_bytes(size, "big"))
            encoded[0] |= prefix
            return bytes(encoded)
    raise ValueError(value)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def protect_initial(
    payload: bytes,
    *,
    dcid: bytes = RFC_DCID,
    key_dcid: bytes | None = None,
    packet_number: int = 0,
    version: int = QUIC_V1,
    scid: bytes = b"\x11\x22\x33\x44",
    token: bytes = b"",
    pad_to: int = 0,
) -> bytes:
    """An Initial packet protected with the client keys of `key_dcid` (default: its own DCID)."""
    key, iv, hp = client_initial_keys(version, key_dcid if key_dcid is not None else dcid)
    initial_type = 0 if version == QUIC_V1 else 1
    pn_length = 2
    first = 0xC0 | initial_type << 4 | (pn_length - 1)
    pn_bytes = packet_number.to_bytes(pn_length, "big")
    prefix = bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    prefix += _varint(len(token)) + token
    fixed = len(prefix) + 2 + pn_length + 16  # with a 2-byte Length field and the AEAD tag
    # PADDING up to the requested size, and at least enough for the header-protection sample
    payload = payload.ljust(max(pad_to - fixed, 4 - pn_length), b"\x00")
    header = prefix + (0x4000 | (pn_length + len(payload) + 16)).to_bytes(2, "big") + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = AESGCM(key).encrypt(nonce, payload, header)
    pn_offset = len(header) - pn_length
    sample = (pn_bytes + ciphertext)[4:20]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    protected = bytearray(header + ciphertext)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_length):
        protected[pn_offset + i] ^= mask[1 + i]
    return bytes(protected)


def handshake_packet(version: int = QUIC_V1, body: bytes = b"\xab" * 40) -> bytes:
    """A long-header Handshake packet: the decoder must step over it, never open it."""
    packet_type = 2 if version == QUIC_V1 else 3
    head = bytes((0xC0 | packet_type << 4,)) + version.to_bytes(4, "big") + b"\x04abcd\x00"
    return head + _varint(len(body)) + body


def client_hello(server_name: str, pad: int = 0) -> bytes:
    """A TLS 1.3 ClientHello handshake message; `pad` adds a padding extension to make it long."""
    sni = server_name.encode()
    extensions = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    extensions += struct.pack("!HHHB", 16, 5, 3, 2) + b"h3"
    extensions += struct.pack("!HHB", 43, 3, 2) + b"\x03\x04"
    if pad:
        extensions += struct.pack("!HH", 21, pad) + bytes(pad)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


# -- capture helpers ---------------------------------------------------------------------------------


def _udp_payloads(path: Path) -> Iterator[tuple[tuple[bytes, bytes, int, int], bytes]]:
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        raw_ip = reader.datalink() in (dpkt.pcap.DLT_RAW, 101)
        for _, frame in reader:
            if raw_ip:
                ip = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
            else:
                ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.udp.UDP):
                udp = ip.data
                yield (bytes(ip.src), bytes(ip.dst), udp.sport, udp.dport), bytes(udp.data)


def _expected_sni(corpus: Path, name: str) -> list[str]:
    for line in (corpus / "expected.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["pcap"] == name:
            return entry["sni"]
    raise AssertionError(f"{name} missing from expected.jsonl")


# -- key schedule and the RFC vectors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (QUIC_V1, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"),
        (QUIC_V2, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"),
    ],
)
def test_client_initial_keys_match_rfc(version: int, key: str, iv: str, hp: str) -> None:
    assert client_initial_keys(version, RFC_DCID) == (bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """RFC 8446 7.1 with an empty context, through the `cryptography` package's HKDF-Expand."""
    full_label = b"tls13 " + label
    info = struct.pack("!HB", length, len(full_label)) + full_label + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from([QUIC_V1, QUIC_V2]), dcid=st.binary(max_size=20))
def test_client_initial_keys_equal_the_libraries_hkdf(version: int, dcid: bytes) -> None:
    """The key schedule in hashlib's objects derives what HKDF (RFC 5869) derives, for any DCID."""
    v1 = version == QUIC_V1
    salt = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a" if v1 else "0dede3def700a6db819381be6e269dcbf9bd2ed9")
    prefix = b"quic" if v1 else b"quicv2"
    initial = hmac.digest(salt, dcid, "sha256")  # HKDF-Extract
    client = _hkdf_expand_label(initial, b"client in", 32)
    assert client_initial_keys(version, dcid) == (
        _hkdf_expand_label(client, prefix + b" key", 16),
        _hkdf_expand_label(client, prefix + b" iv", 12),
        _hkdf_expand_label(client, prefix + b" hp", 16),
    )


def test_client_initial_keys_reject_other_versions() -> None:
    with pytest.raises(ValueError):
        client_initial_keys(0xFF00001D, RFC_DCID)


@pytest.mark.parametrize("packet", [RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL], ids=["v1", "v2"])
def test_rfc_client_initial_yields_its_client_hello(packet: bytes) -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    assert is_quic_initial(packet)
    hello = tracker.feed("conn", packet)
    assert hello == ClientHello(
        server_name="example.com",
        alpn=("alpn",),
        ech=False,
        version="1.3",
        extensions=(0, 65281, 10, 16, 5, 51, 43, 13, 45, 28, 57),
    )
    assert counters.values == {"quic.initials": 1, "quic.hellos": 1}


def test_hello_is_returned_once_per_connection() -> None:
    tracker = QuicClientHelloTracker()
    assert tracker.feed("a", RFC9001_CLIENT_INITIAL) is not None
    assert tracker.feed("a", RFC9001_CLIENT_INITIAL) is None
    assert tracker.feed("b", RFC9001_CLIENT_INITIAL) is not None  # another connection, same bytes


def test_damaged_packet_counts_a_decrypt_error() -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    damaged = bytearray(RFC9001_CLIENT_INITIAL)
    damaged[600] ^= 0x01
    assert tracker.feed("conn", bytes(damaged)) is None
    assert counters.get("quic.decrypt_errors") == 1
    assert tracker.feed("conn", RFC9001_CLIENT_INITIAL) is not None  # the failure left no state behind


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (RFC9001_CLIENT_INITIAL, True),
        (RFC9369_CLIENT_INITIAL, True),
        (RFC9001_CLIENT_INITIAL[:7], True),
        (RFC9001_CLIENT_INITIAL[:6], False),
        (b"", False),
        (b"\x40" + RFC9001_CLIENT_INITIAL[1:], False),  # short header
        (b"\x80" + RFC9001_CLIENT_INITIAL[1:], False),  # fixed bit clear
        (handshake_packet(QUIC_V1), False),
        (b"\xc0" + RFC9369_CLIENT_INITIAL[1:], False),  # v2 with v1's Initial type bits is a v2 Retry
        (b"\xd0" + RFC9001_CLIENT_INITIAL[1:], False),  # v1 with v2's Initial type bits is 0-RTT
        (b"\xc0\xff\x00\x00\x1d" + RFC9001_CLIENT_INITIAL[5:], False),  # draft-29
        (b"\xc0\x00\x00\x00\x00" + RFC9001_CLIENT_INITIAL[5:], False),  # version negotiation
        (RFC9001_CLIENT_INITIAL[:5] + b"\x15" + RFC9001_CLIENT_INITIAL[6:], False),  # 21-byte DCID
    ],
)
def test_is_quic_initial(datagram: bytes, expected: bool) -> None:
    assert is_quic_initial(datagram) is expected


# -- real captures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUIC_CAPTURES)
def test_captures_yield_expected_server_names(corpus: Path, name: str) -> None:
    path = corpus / name
    if not path.is_file():
        pytest.skip(f"{name} not in the corpus")
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    hellos = [
        hello
        for conn_key, payload in _udp_payloads(path)
        if is_quic_initial(payload) and (hello := tracker.feed(conn_key, payload)) is not None
    ]
    assert [hello.server_name for hello in hellos] == _expected_sni(corpus, name)
    assert all(hello.version == "1.3" and hello.alpn for hello in hellos)
    assert counters.get("quic.hellos") == len(hellos)
    assert counters.get("quic.hello_errors") == 0


def test_retry_capture_reports_the_hello_once(corpus: Path) -> None:
    path = corpus / "quic-retry__input.pcap"
    if not path.is_file():
        pytest.skip("quic-retry capture not in the corpus")
    tracker = QuicClientHelloTracker()
    client_initials = 0
    hellos = []
    for conn_key, payload in _udp_payloads(path):
        if is_quic_initial(payload) and conn_key[3] == 443:
            client_initials += 1
            if (hello := tracker.feed(conn_key, payload)) is not None:
                hellos.append(hello.server_name)
    assert client_initials >= 2  # the Initial before the Retry and the one after it
    assert hellos == ["www.gravatar.com"]


# -- crafted packets ----------------------------------------------------------------------------------


def _split(data: bytes, parts: int) -> list[tuple[int, bytes]]:
    step = -(-len(data) // parts)
    return [(offset, data[offset : offset + step]) for offset in range(0, len(data), step)]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_hello_over_three_initials_out_of_order(version: int) -> None:
    hello = client_hello("portal.hospital.example", pad=2400)  # as long as a post-quantum one
    pieces = _split(hello, 3)
    packets = [
        protect_initial(crypto_frame(offset, data), packet_number=pn, version=version, pad_to=1200)
        for pn, (offset, data) in enumerate(pieces)
    ]
    tracker = QuicClientHelloTracker()
    assert tracker.feed("c", packets[2]) is None
    assert tracker.feed("c", packets[0]) is None
    result = tracker.feed("c", packets[1])
    assert result is not None and result.server_name == "portal.hospital.example"
    assert result.alpn == ("h3",)


def test_scattered_crypto_frames_with_ping_ack_and_close_in_one_packet() -> None:
    hello = client_hello("scatter.example")
    pieces = _split(hello, 5)
    ack_ecn = b"\x03" + _varint(7) + _varint(0) + _varint(1) + _varint(2) + _varint(0) + _varint(1) + b"\x00\x00\x00"
    connection_close = b"\x1c" + _varint(0) + _varint(0) + _varint(3) + b"bye"
    payload = (
        b"\x01"
        + crypto_frame(*pieces[3])
        + b"\x00" * 9
        + crypto_frame(*pieces[0])
        + ack_ecn
        + crypto_frame(*pieces[4])
        + crypto_frame(*pieces[1])
        + b"\x02" + _varint(3) + _varint(10) + _varint(0) + _varint(3)
        + crypto_frame(*pieces[2])
        + crypto_frame(*pieces[0])  # a retransmitted duplicate changes nothing
        + connection_close
    )
    result = QuicClientHelloTracker().feed("c", protect_initial(payload, pad_to=1200))
    assert result is not None and result.server_name == "scatter.example"


def test_frames_after_an_unknown_frame_are_not_read() -> None:
    hello = client_hello("hidden.example")
    stream_frame = b"\x08\x00" + b"junk"
    tracker = QuicClientHelloTracker()
    assert tracker.feed("c", protect_initial(stream_frame + crypto_frame(0, hello), pad_to=1200)) is None
    assert tracker.feed("c", protect_initial(crypto_frame(0, hello), packet_number=1, pad_to=1200)) is not None


def test_coalesced_packets_are_all_walked() -> None:
    hello = client_hello("coalesced.example", pad=300)
    first, second = _split(hello, 2)
    datagram = (
        protect_initial(crypto_frame(*first), packet_number=0)
        + protect_initial(crypto_frame(*second), packet_number=1)
        + handshake_packet()
        + bytes(200)  # datagram padding after the last packet
    )
    counters = Counters()
    result = QuicClientHelloTracker(counters=counters).feed("c", datagram)
    assert result is not None and result.server_name == "coalesced.example"
    assert counters.get("quic.initials") == 2


def test_initial_after_a_handshake_packet_is_reached() -> None:
    datagram = handshake_packet() + protect_initial(crypto_frame(0, client_hello("second.example")))
    result = QuicClientHelloTracker().feed("c", datagram)
    assert result is not None and result.server_name == "second.example"


def test_later_initials_keep_the_original_keys_under_the_servers_dcid() -> None:
    hello = client_hello("followup.example", pad=1500)
    first, second = _split(hello, 2)
    tracker = QuicClientHelloTracker()
    assert tracker.feed("c", protect_initial(crypto_frame(*first), pad_to=1200)) is None
    # After the server's first Initial the client addresses the server's connection ID but the
    # packet keys still come from the DCID of its very first Initial.
    later = protect_initial(crypto_frame(*second), dcid=b"\x5e\x4e\x4e\x4e", key_dcid=RFC_DCID, packet_number=1)
    result = tracker.feed("c", later)
    assert result is not None and result.server_name == "followup.example"


def test_retry_restarts_the_crypto_stream_under_new_keys() -> None:
    before_retry = client_hello("stale.example", pad=1500)
    after_retry = client_hello("fresh.example", pad=1500)
    new_dcid = bytes.fromhex("a1b2c3d4e5f60718")
    tracker = QuicClientHelloTracker()
    assert tracker.feed("c", protect_initial(crypto_frame(*_split(before_retry, 2)[0]), pad_to=1200)) is None
    first, second = _split(after_retry, 2)
    token = b"retry-token"
    assert tracker.feed("c", protect_initial(crypto_frame(*first), dcid=new_dcid, packet_number=1, token=token)) is None
    result = tracker.feed("c", protect_initial(crypto_frame(*second), dcid=new_dcid, packet_number=2, token=token))
    assert result is not None and result.server_name == "fresh.example"


def test_server_datagrams_of_a_known_client_are_skipped_before_decryption() -> None:
    hello = client_hello("split.example", pad=1500)
    first, second = _split(hello, 2)
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    client, server = ("10.0.0.1", "192.0.2.7", 50000, 443), ("192.0.2.7", "10.0.0.1", 443, 50000)
    assert tracker.feed(client, protect_initial(crypto_frame(*first)), server) is None
    server_initial = protect_initial(crypto_frame(0, b"\x02" * 90), dcid=b"\x99\x88", key_dcid=b"server-side-cid")
    assert tracker.feed(server, server_initial, client) is None  # an ACK between the client's two Initials
    result = tracker.feed(client, protect_initial(crypto_frame(*second), packet_number=1), server)
    assert result is not None and result.server_name == "split.example"
    assert tracker.feed(server, server_initial, client) is None
    assert counters.get("quic.server_datagrams") == 2
    assert counters.get("quic.decrypt_errors") == 0
    assert counters.get("quic.initials") == 2
    # Without a known client on the way back, the same bytes are tried (and fail) as a client's.
    assert tracker.feed(("192.0.2.9", "10.0.0.2", 443, 50001), server_initial, ("10.0.0.2", "192.0.2.9", 50001, 443)) is None
    assert counters.get("quic.decrypt_errors") == 1


def test_undecryptable_packets_leave_no_connection_state() -> None:
    hello = client_hello("survivor.example", pad=1500)
    first, second = _split(hello, 2)
    counters = Counters()
    tracker = QuicClientHelloTracker(max_connections=1, counters=counters)
    assert tracker.feed("client", protect_initial(crypto_frame(*first))) is None
    for i in range(5):  # server Initials: keys of another DCID, so client keys never open them
        server_like = protect_initial(crypto_frame(0, b"\x02" * 90), dcid=b"\x99\x88", key_dcid=b"server-side-cid")
        assert tracker.feed(("server", i), server_like) is None
    assert counters.get("quic.decrypt_errors") == 5
    assert counters.get("quic.evicted") == 0
    result = tracker.feed("client", protect_initial(crypto_frame(*second), packet_number=1))
    assert result is not None and result.server_name == "survivor.example"


def test_oldest_connection_is_evicted_at_the_cap() -> None:
    hellos = {key: _split(client_hello(f"{key}.example", pad=1500), 2) for key in ("a", "b", "c")}
    counters = Counters()
    tracker = QuicClientHelloTracker(max_connections=2, counters=counters)
    for key, (first, _) in hellos.items():
        assert tracker.feed(key, protect_initial(crypto_frame(*first))) is None
    assert counters.get("quic.evicted") == 1
    assert tracker.feed("a", protect_initial(crypto_frame(*hellos["a"][1]), packet_number=1)) is None  # its start is gone
    result = tracker.feed("c", protect_initial(crypto_frame(*hellos["c"][1]), packet_number=1))
    assert result is not None and result.server_name == "c.example"


def test_hello_larger_than_the_byte_cap_is_given_up() -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(max_crypto_bytes=512, counters=counters)
    hello = client_hello("big.example", pad=900)
    first, second = _split(hello, 2)
    assert tracker.feed("c", protect_initial(crypto_frame(*first))) is None
    assert tracker.feed("c", protect_initial(crypto_frame(*second), packet_number=1)) is None
    assert counters.get("quic.hello_errors") == 1
    assert counters.get("quic.hellos") == 0


def test_crypto_stream_that_is_no_client_hello_is_given_up() -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    server_hello_like = b"\x02\x00\x00\x30" + bytes(48)
    assert tracker.feed("c", protect_initial(crypto_frame(0, server_hello_like))) is None
    assert counters.get("quic.hello_errors") == 1
    assert tracker.feed("c", protect_initial(crypto_frame(0, client_hello("late.example")), packet_number=1)) is None


def test_too_many_scattered_chunks_are_given_up() -> None:
    hello = client_hello("confetti.example", pad=3000)
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters)
    # 300 one-byte chunks, each ahead of a gap, spread over a few packets
    chunks = [crypto_frame(offset, hello[offset : offset + 1]) for offset in range(10, 3010, 10)]
    for pn in range(3):
        tracker.feed("c", protect_initial(b"".join(chunks[pn * 100 : (pn + 1) * 100]), packet_number=pn))
    assert counters.get("quic.hello_errors") == 1
    assert tracker.feed("c", protect_initial(crypto_frame(0, hello), packet_number=3)) is None


# -- fuzzing ------------------------------------------------------------------------------------------


def _feed_bounded(tracker: QuicClientHelloTracker, datagrams: list[bytes]) -> None:
    started = time.perf_counter()
    for datagram in datagrams:
        result = tracker.feed("fuzz", datagram)
        assert result is None or isinstance(result, ClientHello)
    assert time.perf_counter() - started < 2.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=1500), max_size=4))
def test_random_datagrams_never_raise(datagrams: list[bytes]) -> None:
    _feed_bounded(QuicClientHelloTracker(), datagrams)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.binary(max_size=1200))
def test_random_datagrams_behind_an_initial_header_never_raise(header_tail: bytes, rest: bytes) -> None:
    _feed_bounded(QuicClientHelloTracker(), [RFC9001_CLIENT_INITIAL[:6] + header_tail + rest])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL]),
    st.lists(st.tuples(st.integers(0, 1199), st.integers(1, 255)), min_size=1, max_size=6),
    st.integers(0, 1200),
)
def test_mutated_rfc_packets_never_raise(packet: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(packet)
    for position, xor in flips:
        mutated[position] ^= xor
    _feed_bounded(QuicClientHelloTracker(), [bytes(mutated), bytes(mutated[:cut])])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1100), st.integers(0, 2**16 - 1), st.sampled_from([QUIC_V1, QUIC_V2]))
def test_random_plaintext_in_valid_protection_never_raises(payload: bytes, packet_number: int, version: int) -> None:
    """Valid keys put arbitrary bytes in front of the frame parser and the reassembler."""
    _feed_bounded(QuicClientHelloTracker(), [protect_initial(payload, packet_number=packet_number, version=version)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4), st.integers(0, 400))
def test_mutated_hello_in_valid_protection_never_raises(flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(crypto_frame(0, client_hello("mutant.example", pad=100)))
    for position, xor in flips:
        frame[position % len(frame)] ^= xor
    _feed_bounded(QuicClientHelloTracker(), [protect_initial(bytes(frame[: len(frame) - cut]), pad_to=1200)])


_frame = st.one_of(
    st.builds(crypto_frame, st.integers(0, 70_000), st.binary(max_size=300)),
    st.just(b"\x01"),
    st.binary(min_size=1, max_size=20).map(lambda b: b"\x00" * len(b)),
    st.binary(max_size=12).map(lambda b: b"\x02" + b),
    st.binary(max_size=12).map(lambda b: b"\x1c" + b),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.lists(_frame, max_size=8).map(b"".join), min_size=1, max_size=4))
def test_random_frame_sequences_never_raise(payloads: list[bytes]) -> None:
    packets = [protect_initial(payload, packet_number=pn) for pn, payload in enumerate(payloads)]
    _feed_bounded(QuicClientHelloTracker(max_crypto_bytes=4096), packets)


@settings(max_examples=100, deadline=None)
@given(st.permutations(range(6)), st.integers(min_value=200, max_value=3000))
def test_any_delivery_order_reassembles_the_hello(order: list[int], pad: int) -> None:
    hello = client_hello("order.example", pad=pad)
    pieces = _split(hello, 6)
    tracker = QuicClientHelloTracker()
    results = [
        tracker.feed("c", protect_initial(crypto_frame(*pieces[index]), packet_number=pn))
        for pn, index in enumerate(order[: len(pieces)])
    ]
    assert [r.server_name if r else None for r in results] == [None] * (len(pieces) - 1) + ["order.example"]
