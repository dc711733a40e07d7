"""LZ-String ``decompressFromBase64``: the ``lz64`` body compression of PostHog's browser SDK.

The format is the LZW variant of the lz-string JavaScript library: a bit stream read six bits per
base64 character, most significant bit first; codes 0 and 1 add an 8- or 16-bit character to the
dictionary, 2 ends the stream, any other code names a dictionary entry. The output is JavaScript
UTF-16 code units, joined here into text (lone surrogates become U+FFFD).

Bounded: stops with None once the output passes ``max_output`` characters (the dictionary only
holds prefixes of the output, so its size is bounded by the same), and never raises.
"""
from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_VALUE = {char: index for index, char in enumerate(_ALPHABET)}
_CODE_UNITS = 1 << 16


class _Bits:
    """The base64 text as a bit stream, six bits a character, most significant first."""

    __slots__ = ("text", "index", "value", "mask")

    def __init__(self, text: str) -> None:
        self.text = text
        self.index = 1
        self.value = _VALUE.get(text[0], -1) if text else -1
        self.mask = 32

    def read(self, count: int) -> int | None:
        """``count`` bits, least significant first (as lz-string packs them); None past the end
        or on a character outside the alphabet."""
        result, power = 0, 1
        for _ in range(count):
            if self.value < 0:
                return None
            if self.value & self.mask:
                result |= power
            power <<= 1
            self.mask >>= 1
            if self.mask == 0:
                self.mask = 32
                self.value = _VALUE.get(self.text[self.index], -1) if self.index < len(self.text) else -1
                self.index += 1
        return result


def decompress_from_base64(text: str, max_output: int = 1 << 20) -> str | None:
    """The text lz-string's ``compressToBase64`` made ``text`` from, or None when it is not one."""
    text = text.strip()
    if not text:
        return None
    bits = _Bits(text)
    first = bits.read(2)
    if first is None or first == 2 or first == 3:
        return None
    char = bits.read(8 if first == 0 else 16)
    if char is None:
        return None
    dictionary: list[str] = ["", "", "", chr(char)]
    word = dictionary[3]
    out = [word]
    size, enlarge_in, width = len(word), 4, 3
    while True:
        code = bits.read(width)
        if code is None:
            return None
        if code in (0, 1):
            char = bits.read(8 if code == 0 else 16)
            if char is None:
                return None
            dictionary.append(chr(char))
            code = len(dictionary) - 1
            enlarge_in -= 1
        elif code == 2:
            return _utf16("".join(out))
        if enlarge_in == 0:
            enlarge_in, width = 1 << width, width + 1
        if code < len(dictionary) and code > 2:
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = word + word[0]
        else:
            return None
        out.append(entry)
        size += len(entry)
        if size > max_output:
            return None
        dictionary.append(word + entry[0])
        enlarge_in -= 1
        word = entry
        if enlarge_in == 0:
            enlarge_in, width = 1 << width, width + 1


def _utf16(units: str) -> str:
    """JavaScript code units (surrogate pairs as two characters) as Python text."""
    if all(ord(char) < 0xD800 or ord(char) > 0xDFFF for char in units):
        return units
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
