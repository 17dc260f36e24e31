"""Pre-built SET batches for fill (pure; no I/O).

Every ``SET key value`` of a run has the same length ``L``, so a chunk of ``B`` commands is a
``B x L`` grid of bytes, and each byte column is either constant (the RESP framing) or varies
per key. The hot path never builds per-key Python objects:

1. At start, a *ring* of ``M`` complete commands is generated once from the seed: framing in
   place, key padding random printable bytes, values random bytes (incompressible). The
   randomness is an AES-128-CTR keystream keyed by the seed (reproducible, and ~10x faster
   than ``random.randbytes``), then the framing and the printable key bytes are written over
   it column by column (or row by row for long keys), so building the ring takes ~10-20 ms.
2. A chunk copies ``B`` consecutive commands of the ring into the connection's buffer (one
   ``memcpy``) at a ring position that varies per chunk, then overwrites only the columns that
   make keys unique and place them: one *strided* slice assignment per column
   (``buf[col:B*L:L] = column``), which runs at C speed. That is ``3`` tag columns (cluster),
   ``hi`` columns (the chunk number, constant within a chunk) and ``lo`` columns (the position
   in the chunk, precomputed once).

Keys are ``[{tag}][hi][lo][padding]``: ``hi`` and ``lo`` are base-64 digits (``A-Za-z0-9-_``)
of the chunk number and of the position, each scrambled by a seeded affine bijection, so keys
look random yet are unique across jobs and processes. Cluster keys start with the ``{tag}`` of
the slot they must land on (:func:`client.slots.slot_tags`), key number ``g`` of a node on the
node's ``g mod len(slots)``-th slot. Values come from the ring, so they are random bytes, but
the ring is small (~16 MiB, 65,536 commands at most), so larger fills reuse its values: each
value is random, but not every value is distinct.

:func:`reference_key` rebuilds one key the slow, obvious way, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fill.plan import DIGIT_BASE, FillPlan, Job, KeyLayout

__all__ = [
    "ALPHABET",
    "BARRIER",
    "REPLY_OFF",
    "RING_BYTES",
    "RING_COMMANDS",
    "Affine",
    "BarrierError",
    "BatchBuilder",
    "command_framing",
    "encode_digits",
    "keystream",
    "parse_barrier",
    "reference_key",
]

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
assert len(ALPHABET) == DIGIT_BASE

RING_BYTES = 16 * 1024 * 1024
RING_COMMANDS = 65536
"""Size of the ring of pre-generated commands (at most this many bytes and commands, but
always at least two chunks' worth)."""

REPLY_OFF = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n"
"""Sent first on every fill connection: the server stops replying (no reply to this either)."""

BARRIER = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$2\r\nON\r\n*1\r\n$4\r\nPING\r\n"
"""Sent last: replies resume; ``+OK`` and ``+PONG`` prove every earlier command was processed."""

_KEYSTREAM_STEP = 1 << 20
_KEY_COLUMNS_MAX = 128
"""Keys up to this long are made printable column by column, longer ones row by row."""
_PRINTABLE = bytes(ALPHABET[b % DIGIT_BASE] for b in range(256))
_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def command_framing(key_size: int, value_size: int) -> tuple[bytes, bytes, bytes]:
    """The constant parts of one SET: (before the key, between key and value, after value)."""
    return (
        b"*3\r\n$3\r\nSET\r\n$%d\r\n" % key_size,
        b"\r\n$%d\r\n" % value_size,
        b"\r\n",
    )


def encode_digits(number: int, width: int) -> bytes:
    """``number`` as ``width`` base-64 digits of :data:`ALPHABET`, most significant first."""
    if not 0 <= number < DIGIT_BASE**width:
        raise ValueError(f"{number} does not fit in {width} base-64 digits")
    out = bytearray(width)
    for i in range(width - 1, -1, -1):
        number, digit = divmod(number, DIGIT_BASE)
        out[i] = ALPHABET[digit]
    return bytes(out)


def _splitmix(value: int) -> int:
    z = (value + _MIX) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Affine:
    """A seeded bijection of ``range(64**width)``: ``x -> (x * a + b) mod 64**width``, a odd."""

    __slots__ = ("a", "b", "modulus", "width")

    def __init__(self, width: int, seed: int) -> None:
        self.width = width
        self.modulus = DIGIT_BASE**width
        self.a = (_splitmix(seed) | 1) % self.modulus or 1
        self.b = _splitmix(seed ^ 0x5DEECE66D) % self.modulus

    def __call__(self, x: int) -> int:
        return int((x * self.a + self.b) % self.modulus)

    def digits(self, x: int) -> bytes:
        return encode_digits(self(x), self.width)


def _scramblers(layout: KeyLayout, seed: int) -> tuple[Affine, Affine]:
    return Affine(layout.hi_width, seed ^ 0x68690000), Affine(layout.lo_width, seed ^ 0x6C6F0000)


def _ring_commands(plan: FillPlan, length: int) -> int:
    wanted = max(2 * plan.chunk_commands, min(RING_COMMANDS, RING_BYTES // length))
    return max(plan.chunk_commands, min(wanted, plan.total_commands))


def keystream(seed: int, size: int) -> bytearray:
    """``size`` pseudo-random bytes, a function of ``seed`` only: the AES-128-CTR keystream
    under a key derived from the seed (fast, reproducible, incompressible)."""
    key = b"".join(_splitmix(seed ^ salt).to_bytes(8, "little") for salt in (0x7269, 0x6E67))
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    out = bytearray(size + 15)  # update_into wants a block - 1 bytes of slack
    view = memoryview(out)
    zeros = memoryview(bytes(min(size, _KEYSTREAM_STEP)))
    for start in range(0, size, _KEYSTREAM_STEP):
        count = min(_KEYSTREAM_STEP, size - start)
        encryptor.update_into(zeros[:count], view[start : start + count + 15])
    view.release()
    del out[size:]
    return out


def _build_ring(count: int, key_size: int, value_size: int, seed: int) -> bytearray:
    """``count`` complete SET commands: printable random keys, random values.

    The whole ring starts as random bytes (:func:`keystream`); the framing is written over it
    one byte column at a time (a strided slice assignment each, at C speed), and the key bytes
    are mapped to the printable alphabet, by column for short keys and by row for long ones.
    """
    head, mid, tail = command_framing(key_size, value_size)
    length = len(head) + key_size + len(mid) + value_size + len(tail)
    end = count * length
    ring = keystream(seed, end)
    constant: dict[int, bytes] = {}
    value_offset = len(head) + key_size + len(mid)
    for offset, part in ((0, head), (len(head) + key_size, mid), (value_offset + value_size, tail)):
        for i, byte in enumerate(part):
            column = constant.get(byte)
            if column is None:
                column = constant[byte] = bytes((byte,)) * count
            ring[offset + i : end : length] = column
    key = len(head)
    if key_size <= _KEY_COLUMNS_MAX:
        for i in range(key, key + key_size):
            ring[i:end:length] = ring[i:end:length].translate(_PRINTABLE)
    else:
        for start in range(key, end, length):
            ring[start : start + key_size] = ring[start : start + key_size].translate(_PRINTABLE)
    return ring


def _ring_start(seed: int, chunk_id: int, positions: int) -> int:
    return _splitmix(seed ^ (chunk_id * _MIX & _MASK64)) % positions


class BatchBuilder:
    """Writes chunk ``k`` of a job into a buffer, for one plan and seed.

    Build once per process (it generates the ring: ~16 MiB, well under 0.1 s), then call
    :meth:`build` for each chunk into a buffer of :attr:`buffer_size` bytes.
    ``tags`` is the slot -> tag table (:func:`client.slots.slot_tags`), needed for cluster plans.
    """

    def __init__(self, plan: FillPlan, tags: Sequence[str] | None = None) -> None:
        settings = plan.settings
        self.plan = plan
        self.length = plan.command_length
        self.key_size = settings.key_size
        self.value_size = settings.value_size
        self.key_offset = len(command_framing(self.key_size, self.value_size)[0])
        self._layout = plan.layout
        self._seed = settings.seed
        self._hi, self._lo = _scramblers(plan.layout, settings.seed)
        cc = plan.chunk_commands
        self.buffer_size = cc * self.length

        # The ring: M whole commands with the framing in place.
        count = _ring_commands(plan, self.length)
        ring = _build_ring(count, self.key_size, self.value_size, settings.seed)
        ring_len = count * self.length
        if plan.cluster:
            ring[self.key_offset : ring_len : self.length] = b"{" * count
            ring[self.key_offset + 4 : ring_len : self.length] = b"}" * count
        self._ring = memoryview(ring)  # never written again
        self._ring_positions = count - cc + 1

        # Precomputed columns: lo digits per position, constant columns for hi digits.
        lo = self._lo
        numbers = [lo(j) for j in range(cc)]
        width = plan.layout.lo_width
        self._lo_columns = [
            memoryview(bytes([ALPHABET[(x >> (6 * (width - 1 - i))) & 63] for x in numbers]))
            for i in range(width)
        ]
        self._constant = {c: memoryview(bytes((c,)) * cc) for c in ALPHABET}

        # Cluster: per target, the tag columns of its slots, tiled to cover any window.
        self._tag_columns: list[tuple[int, list[memoryview]]] = []
        if plan.cluster:
            if tags is None:
                raise ValueError("a cluster plan needs the slot tags")
            for target in plan.targets:
                slots = target.slot_list()
                repeat = 1 + -(-cc // len(slots))
                joined = "".join([tags[s] for s in slots]).encode("ascii")  # 3 bytes a slot
                columns = [memoryview(joined[i::3] * repeat) for i in range(3)]
                self._tag_columns.append((len(slots), columns))

    def build(self, buf: bytearray, job: Job, chunk: int) -> int:
        """Write chunk ``chunk`` of ``job`` at the start of ``buf``; return its length in bytes."""
        plan = self.plan
        count = plan.chunk_size(job, chunk)
        length = self.length
        end = count * length
        chunk_id = job.first_chunk + chunk
        start = _ring_start(self._seed, chunk_id, self._ring_positions) * length
        buf[:end] = self._ring[start : start + end]
        key = self.key_offset
        layout = self._layout
        if plan.cluster:
            slot_count, columns = self._tag_columns[job.target]
            first = (job.first_key + chunk * plan.chunk_commands) % slot_count
            for i in range(3):
                buf[key + 1 + i : end : length] = columns[i][first : first + count]
        constant = self._constant
        for i, digit in enumerate(self._hi.digits(chunk_id)):
            buf[key + layout.hi_offset + i : end : length] = constant[digit][:count]
        for i, column in enumerate(self._lo_columns):
            buf[key + layout.lo_offset + i : end : length] = column[:count]
        return end

    def chunk_slots(self, job: Job, chunk: int) -> list[int] | None:
        """The slot of each key of a chunk (cluster), for tests and checks; None if standalone."""
        if not self.plan.cluster:
            return None
        slots = self.plan.targets[job.target].slot_list()
        first = job.first_key + chunk * self.plan.chunk_commands
        return [slots[(first + j) % len(slots)] for j in range(self.plan.chunk_size(job, chunk))]


def reference_key(
    plan: FillPlan, tags: Sequence[str] | None, job: Job, chunk: int, position: int
) -> bytes:
    """The unique part of a key, built the slow way: ``[{tag}][hi][lo]`` (no padding).

    A key made by :class:`BatchBuilder` starts with exactly these bytes.
    """
    hi, lo = _scramblers(plan.layout, plan.settings.seed)
    prefix = b""
    if plan.cluster:
        if tags is None:
            raise ValueError("a cluster plan needs the slot tags")
        number = job.first_key + chunk * plan.chunk_commands + position
        prefix = b"{" + tags[plan.targets[job.target].nth_slot(number)].encode() + b"}"
    return prefix + hi.digits(job.first_chunk + chunk) + lo.digits(position)


class BarrierError(Exception):
    """The reply to :data:`BARRIER` was not ``+OK`` then ``+PONG`` (the text says what came)."""


def parse_barrier(data: bytes) -> bool:
    """Whether ``data`` (everything read after the barrier was sent) holds both replies.

    Returns False while more bytes are needed. Raises :class:`BarrierError` when a reply is not
    the expected one, e.g. an error reply (the server speaks again after ``CLIENT REPLY ON``).
    """
    first = data.find(b"\r\n")
    if first < 0:
        if len(data) > 4096:
            raise BarrierError(f"unexpected reply {data[:80]!r}")
        return False
    if data[:first] != b"+OK":
        raise BarrierError(
            f"CLIENT REPLY ON answered {data[:first][:200].decode('utf-8', 'replace')}"
        )
    second = data.find(b"\r\n", first + 2)
    if second < 0:
        if len(data) - first > 4096:
            raise BarrierError(f"unexpected reply {data[first + 2 : first + 82]!r}")
        return False
    line = data[first + 2 : second]
    if line != b"+PONG":
        raise BarrierError(f"PING answered {line[:200].decode('utf-8', 'replace')}")
    if len(data) > second + 2:
        raise BarrierError(f"unexpected data after the barrier: {data[second + 2 :][:80]!r}")
    return True
