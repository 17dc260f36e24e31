"""The REPL's terminal side: key decoding, the edited line, completion, hints and history.

Split from :mod:`client.shell` (which drives it) and :mod:`client.cliformat` (whose splitting
and command docs it uses). The key decoding, :class:`LineBuffer`, :func:`completions`,
:func:`command_hint` and :func:`is_secret_line` are pure; :class:`History` touches one file and
:class:`TerminalEditor` the terminal (``termios``, blocking reads: :func:`run_repl` runs it
in a worker thread). :func:`stdin_lines` reads piped input, a bounded line at a time.

Behaviour, as redis-cli's linenoise: single-line editing (arrows, Home/End, Ctrl-A/E/B/F/K/U/W,
Ctrl-L), Up/Down through the history, Tab completing command names, subcommands and ``help``
topics (a second Tab lists the choices), the synopsis of the arguments still to type shown in
grey after the cursor, Ctrl-C clearing the line, Ctrl-D on an empty line leaving.
:func:`run_repl` is the loop around it: prompt, read (in a worker thread), run, where Ctrl-C
during a command cancels the command instead of ending the program.

History is kept in ``~/.redis-client_history`` (``REDIS_CLIENT_HISTFILE`` moves it; empty or
``/dev/null`` disables it), at most :data:`HISTORY_LENGTH` lines, rewritten with mode 0600
after each line. Lines that may carry a secret (:func:`is_secret_line`) are never stored.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import trio

from client.cliformat import ArgumentError, CommandDoc, common_prefix, split_line

__all__ = [
    "HISTORY_ENV",
    "HISTORY_LENGTH",
    "History",
    "LineBuffer",
    "TerminalEditor",
    "command_hint",
    "completions",
    "decode_keys",
    "history_path",
    "is_secret_line",
    "run_repl",
    "stdin_lines",
]

HISTORY_LENGTH = 1000
HISTORY_ENV = "REDIS_CLIENT_HISTFILE"
_GREY, _RESET = "\x1b[90m", "\x1b[0m"


def _line_bytes(line: str) -> bytes:
    return line.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Hints and completion (from COMMAND DOCS)
# --------------------------------------------------------------------------------------------


def _doc_for(words: Sequence[str], docs: dict[str, CommandDoc]) -> tuple[CommandDoc, int] | None:
    """The most specific doc entry for the first words of a line, and how many words it used."""
    if len(words) >= 2:
        doc = docs.get(f"{words[0].upper()} {words[1].upper()}")
        if doc is not None:
            return doc, 2
    if words:
        doc = docs.get(words[0].upper())
        if doc is not None:
            return doc, 1
    return None


def command_hint(line: str, docs: dict[str, CommandDoc]) -> str | None:
    """redis-cli's ``hintsCallback``: the synopsis of the arguments not typed yet, or None."""
    try:
        words = [w.decode("utf-8", "surrogateescape") for w in split_line(_line_bytes(line))]
    except ArgumentError:
        return None
    found = _doc_for(words, docs)
    if found is None:
        return None
    doc, used = found
    hint = doc.params
    to_remove = len(words) - used
    while to_remove > 0 and hint:
        if hint[0] == "[":
            break
        if hint[0] == " ":
            to_remove -= 1
        hint = hint[1:]
    if not hint:
        return None
    return hint if line[-1:].isspace() else " " + hint


def completions(line: str, docs: dict[str, CommandDoc], extra: Sequence[str] = ()) -> list[str]:
    """Whole-line completions for ``line``: command names, subcommands, ``help`` topics.

    Args:
        line: the text typed so far.
        docs: from :func:`parse_command_docs`.
        extra: more first words to offer (the shell's own ``:`` commands).
    """
    lower = line.lower()
    if lower.startswith("help "):
        rest = line[5:].lstrip()
        head = line[: len(line) - len(rest)]
        groups = sorted({"@" + d.group for d in docs.values() if d.group})
        topics = [*sorted(docs), *groups]
        return [head + t for t in topics if t.lower().startswith(rest.lower())]
    words = line.split(" ")
    if len(words) == 1:
        names = [n for n in sorted(docs) if " " not in n] + list(extra)
        return [n for n in names if n.lower().startswith(lower)]
    if len(words) == 2 and words[0]:
        prefix = words[0].upper() + " "
        subs = [n for n in sorted(docs) if n.startswith(prefix)]
        return [words[0] + " " + n[len(prefix) :] for n in subs if n.lower().startswith(lower)]
    return []


# --------------------------------------------------------------------------------------------
# Line editing (pure state; TerminalEditor drives the terminal)
# --------------------------------------------------------------------------------------------

# Escape sequences a terminal sends for editing keys, by name.
_KEY_SEQUENCES = {
    "\x1b[A": "up",
    "\x1b[B": "down",
    "\x1b[C": "right",
    "\x1b[D": "left",
    "\x1b[H": "home",
    "\x1b[F": "end",
    "\x1bOH": "home",
    "\x1bOF": "end",
    "\x1bOA": "up",
    "\x1bOB": "down",
    "\x1bOC": "right",
    "\x1bOD": "left",
    "\x1b[1~": "home",
    "\x1b[7~": "home",
    "\x1b[4~": "end",
    "\x1b[8~": "end",
    "\x1b[3~": "delete",
}
_CONTROL_KEYS = {
    "\r": "enter",
    "\n": "enter",
    "\x01": "home",
    "\x02": "left",
    "\x03": "interrupt",
    "\x04": "eof",
    "\x05": "end",
    "\x06": "right",
    "\x08": "backspace",
    "\x7f": "backspace",
    "\t": "tab",
    "\x0b": "kill-end",
    "\x0c": "clear-screen",
    "\x0e": "down",
    "\x10": "up",
    "\x15": "kill-start",
    "\x17": "kill-word",
}
_ESCAPE_START = re.compile(r"\x1b(\[[0-9;]*|O)?\Z")
_ESCAPE_FULL = re.compile(r"\x1b(\[[0-9;]*[~A-Za-z]|O[A-Za-z]|.)", re.DOTALL)


def decode_keys(text: str) -> tuple[list[str], str]:
    """Split terminal input into keys: a key name (``"left"``, ``"enter"``) or literal text.

    Returns:
        The keys, and a trailing incomplete escape sequence to prepend to the next input.
    """
    keys: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            match = _ESCAPE_FULL.match(text, i)
            if match is None or _ESCAPE_START.fullmatch(text[i:]):
                return keys, text[i:]
            keys.append(_KEY_SEQUENCES.get(match.group(), "ignore"))
            i = match.end()
        elif ch in _CONTROL_KEYS:
            keys.append(_CONTROL_KEYS[ch])
            i += 1
        elif ch < " ":
            keys.append("ignore")
            i += 1
        else:
            j = i + 1
            while j < len(text) and text[j] >= " " and text[j] not in "\x1b\x7f":
                j += 1
            keys.append("text:" + text[i:j])
            i = j
    return keys, ""


class LineBuffer:
    """The line being edited: text, cursor and history browsing (no terminal I/O).

    ``history`` is shared with the caller, oldest first; browsing it never changes it.
    """

    def __init__(self, history: Sequence[str] = ()) -> None:
        self.text = ""
        self.pos = 0
        self._history = list(history)
        self._index = len(self._history)  # len(history) = the line being typed
        self._draft = ""

    def apply(self, key: str) -> None:
        """Apply one editing key from :func:`decode_keys` (enter/tab/eof are the caller's)."""
        text, pos = self.text, self.pos
        if key.startswith("text:"):
            chunk = key[5:]
            self.text = text[:pos] + chunk + text[pos:]
            self.pos = pos + len(chunk)
        elif key == "backspace" and pos > 0:
            self.text = text[: pos - 1] + text[pos:]
            self.pos = pos - 1
        elif key == "delete":
            self.text = text[:pos] + text[pos + 1 :]
        elif key == "left":
            self.pos = max(0, pos - 1)
        elif key == "right":
            self.pos = min(len(text), pos + 1)
        elif key == "home":
            self.pos = 0
        elif key == "end":
            self.pos = len(text)
        elif key == "kill-end":
            self.text = text[:pos]
        elif key == "kill-start":
            self.text, self.pos = text[pos:], 0
        elif key == "kill-word":
            start = len(text[:pos].rstrip(" "))
            start = text.rfind(" ", 0, start) + 1
            self.text, self.pos = text[:start] + text[pos:], start
        elif key in ("up", "down"):
            self._browse(-1 if key == "up" else 1)

    def _browse(self, step: int) -> None:
        target = self._index + step
        if not 0 <= target <= len(self._history):
            return
        if self._index == len(self._history):
            self._draft = self.text
        self._index = target
        self.set(self._draft if target == len(self._history) else self._history[target])

    def set(self, text: str) -> None:
        self.text, self.pos = text, len(text)

    def render(self, prompt: str, hint: str | None, columns: int) -> str:
        """The escape sequence that redraws the line, linenoise's single-line style.

        The view scrolls so the cursor stays visible; the hint is shown in grey after the text
        when it fits.
        """
        columns = max(columns, len(prompt) + 2)
        text, pos = self.text, self.pos
        start = 0
        while len(prompt) + pos - start >= columns:
            start += 1
        visible = text[start:][: columns - len(prompt)]
        room = columns - len(prompt) - len(visible)
        shown_hint = ""
        if hint and room > 0 and start == 0 and pos == len(text):
            shown_hint = _GREY + hint[:room] + _RESET
        cursor = len(prompt) + pos - start
        move = f"\r\x1b[{cursor}C" if cursor else "\r"
        return "\r" + prompt + visible + shown_hint + "\x1b[0K" + move


# --------------------------------------------------------------------------------------------
# History and the terminal
# --------------------------------------------------------------------------------------------

# Lines that carry secrets and so never reach the history file.
_SECRET_CONFIG = frozenset({b"requirepass", b"masterauth", b"masteruser", b"tls-key-file-pass"})


def is_secret_line(line: str) -> bool:
    """Whether a typed line may carry a password (AUTH, HELLO ... AUTH, ACL SETUSER...).

    A line that does not split is judged by its text: secret if it mentions ``auth``.
    """
    try:
        words = [w.lower() for w in split_line(_line_bytes(line))]
    except ArgumentError:
        return "auth" in line.lower() or "pass" in line.lower()
    if len(words) > 1 and re.fullmatch(rb"\s*[+-]?\d+", words[0]):
        words = words[1:]  # "3 AUTH ..." (a repeat count)
    if not words:
        return False
    name, rest = words[0], words[1:]
    if name == b"auth":
        return True
    if name == b"hello" or name == b"migrate":
        return b"auth" in rest or b"auth2" in rest
    if name == b"acl":
        return rest[:1] == [b"setuser"]
    if name == b"config":
        return rest[:1] == [b"set"] and any(w in _SECRET_CONFIG for w in rest[1:])
    return False


def history_path() -> Path | None:
    """Where the history lives: ``$REDIS_CLIENT_HISTFILE``, else ``~/.redis-client_history``."""
    configured = os.environ.get(HISTORY_ENV)
    if configured is not None:
        return Path(configured) if configured and configured != "/dev/null" else None
    try:
        return Path.home() / ".redis-client_history"
    except RuntimeError:  # no home directory
        return None


class History:
    """Typed lines, oldest first, saved after each line to a 0600 file; secrets are skipped."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: list[str] = []
        if path is not None:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                text = data.decode("utf-8", "surrogateescape")
                self.lines = [ln for ln in text.split("\n") if ln][-HISTORY_LENGTH:]

    def add(self, line: str) -> None:
        if is_secret_line(line) or (self.lines and self.lines[-1] == line):
            return
        self.lines = [*self.lines, line][-HISTORY_LENGTH:]
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also tighten a file created before, or by others
                data = "".join(ln + "\n" for ln in self.lines)
                os.write(fd, data.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except OSError as exc:
            sys.stdout.flush()
            sys.stderr.write(f"cannot save history to {self.path}: {exc.strerror}\n")
            sys.stderr.flush()
            self.path = None


class TerminalEditor:
    """Reads a line from the terminal in raw mode: editing keys, history, Tab, hints.

    Blocking and synchronous: the REPL calls :meth:`read_line` in a worker thread. The
    terminal is in raw mode only while a line is read, so Ctrl-C during a command is SIGINT.

    Args:
        fd: the terminal (its output goes to fd 1).
        history: browsed with Up/Down.
        docs: gives the command docs for completion and hints, when a line starts.
        extra: more first words to complete (the shell's own ``:`` commands).
    """

    def __init__(
        self,
        fd: int,
        history: History,
        docs: Callable[[], dict[str, CommandDoc]],
        extra: Sequence[str] = (),
    ) -> None:
        self.fd = fd
        self.history = history
        self._docs = docs
        self._extra = tuple(extra)

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns or 80
        except OSError:
            return 80

    def read_line(self, prompt: str, with_history: bool = True) -> str | None:
        """The next line, or None on Ctrl-D (on an empty line) or end of input.

        ``with_history=False`` asks a question: no history, completion or hints, and Ctrl-C
        answers None.
        """
        saved = termios.tcgetattr(self.fd)
        raw = termios.tcgetattr(self.fd)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        raw[1] &= ~termios.OPOST
        raw[2] |= termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, raw)  # TCSANOW keeps typed-ahead keys
        try:
            return self._edit(prompt, with_history)
        finally:
            termios.tcsetattr(self.fd, termios.TCSANOW, saved)

    def _write(self, text: str) -> None:
        os.write(1, text.encode("utf-8", "surrogateescape"))

    def _edit(self, prompt: str, with_history: bool) -> str | None:
        buf = LineBuffer(self.history.lines if with_history else ())
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        docs = self._docs()
        pending = ""
        tabbed = False

        def refresh(hint: bool = True) -> None:
            shown = command_hint(buf.text, docs) if hint and with_history and buf.text else None
            self._write(buf.render(prompt, shown, self._columns()))

        refresh()
        while True:
            data = os.read(self.fd, 1024)
            if not data:
                return None
            keys, pending = decode_keys(pending + decoder.decode(data))
            for key in keys:
                if key == "enter":
                    refresh(hint=False)
                    self._write("\r\n")
                    return buf.text
                if key == "interrupt":
                    self._write("^C\r\n")
                    if not with_history:  # a question: Ctrl-C answers no
                        return None
                    buf = LineBuffer(self.history.lines)
                elif key == "eof" and not buf.text:
                    self._write("\r\n")
                    return None
                elif key == "eof":
                    buf.apply("delete")
                elif key == "clear-screen":
                    self._write("\x1b[H\x1b[2J")
                elif key == "tab" and with_history:
                    self._complete(buf, docs, tabbed)
                    tabbed = True
                    refresh()
                    continue
                else:
                    buf.apply(key)
                tabbed = False
                refresh()

    def _complete(self, buf: LineBuffer, docs: dict[str, CommandDoc], listed: bool) -> None:
        options = completions(buf.text, docs, self._extra)
        if not options:
            self._write("\x07")
            return
        common = common_prefix([o.lower() for o in options])
        if len(options) == 1 or len(common) > len(buf.text):
            buf.set(options[0] if len(options) == 1 else options[0][: len(common)])
        elif listed:
            self._write("\r\n" + "  ".join(options) + "\r\n")


# --------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------


async def run_repl(
    editor: TerminalEditor,
    *,
    prompt: Callable[[], str],
    run_line: Callable[[bytes], Awaitable[bool]],
    before_prompt: Callable[[], None],
    interrupted: Callable[[], None],
) -> int:
    """Prompt, read a line, run it, until Ctrl-D or ``run_line`` returns False; returns 0.

    Each non-blank line goes to the history. Ctrl-C while ``run_line`` runs cancels it, then
    ``interrupted`` is called (the shell drops its connections) and the loop goes on. The
    terminal's settings are restored on the way out, even if the editor thread is abandoned.
    """
    saved = termios.tcgetattr(editor.fd)
    try:
        while True:
            before_prompt()
            line = await trio.to_thread.run_sync(
                editor.read_line, prompt(), True, abandon_on_cancel=True
            )
            if line is None:
                return 0
            if not line.strip():
                continue
            editor.history.add(line)
            with _ctrl_c_cancels() as scope:
                keep_going = await run_line(line.encode("utf-8", "surrogateescape"))
            if scope.cancelled_caught:
                interrupted()
            elif not keep_going:
                return 0
    finally:  # an abandoned editor thread (SIGTERM, kill -INT) must not leave raw mode behind
        termios.tcsetattr(editor.fd, termios.TCSANOW, saved)


@contextlib.contextmanager
def _ctrl_c_cancels() -> Iterator[trio.CancelScope]:
    """A cancel scope that SIGINT (Ctrl-C while a command runs) cancels, instead of exiting."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:

        def handler(signum: int, frame: FrameType | None) -> None:
            token.run_sync_soon(scope.cancel)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield scope
        finally:
            signal.signal(signal.SIGINT, previous)


async def stdin_lines(max_line: int) -> AsyncIterator[bytes | None]:
    """Lines of stdin (bytes, without the newline); None for a line over ``max_line``, skipped."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await trio.to_thread.run_sync(os.read, 0, 1 << 16)
        if not chunk:
            if buffer and not skipping:
                yield bytes(buffer) if len(buffer) <= max_line else None
            return
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
                continue
            yield line if len(line) <= max_line else None
        if len(buffer) > max_line:
            if not skipping:
                yield None
            skipping = True
            buffer.clear()
