// GPT-2's pre-tokenizer written out by hand instead of run through a regex engine, so encoding is
// limited by the BPE cache rather than by backtracking. The pattern, alternative by alternative:
//   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
// Also the character classes behind it and GPT-2's byte <-> printable-character mapping.
#include <array>
#include <functional>

#include "model/text/tokenizer.h"
#include "model/text/unicode_class.h"

namespace meshtrain {
namespace unicode {
namespace {

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool space = c == ' ' || (c >= '\t' && c <= '\r');
    t[c] = letter ? kLetter : (c >= '0' && c <= '9') ? kNumber : space ? kSpace : kOther;
  }
  return t;
}
constexpr std::array<CharClass, 128> kAscii = make_ascii_classes();

CharClass search_ranges(uint32_t cp) {
  int lo = 0, hi = kCharRangeCount - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (cp < kCharRanges[mid].first) {
      hi = mid - 1;
    } else if (cp > kCharRanges[mid].last) {
      lo = mid + 1;
    } else {
      return kCharRanges[mid].cls;
    }
  }
  return kOther;
}

// Two-byte UTF-8 (Latin, Greek, Cyrillic, Hebrew, Arabic, ...) is common enough for a direct table.
constexpr uint32_t kDirectLimit = 0x800;
struct DirectTable {
  CharClass cls[kDirectLimit];
  DirectTable() {
    for (uint32_t cp = 0; cp < kDirectLimit; ++cp) cls[cp] = search_ranges(cp);
  }
};
const DirectTable& direct_table() {
  static const DirectTable table;
  return table;
}

inline bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

inline Symbol symbol_at(const unsigned char* s, size_t n, size_t i) {
  unsigned char c = s[i];
  if (c < 0x80) return {kAscii[c], 1};
  return next_symbol(s, n, i);
}

// Extends a run of class cls from j; returns its end.
inline size_t run_end(const unsigned char* s, size_t n, size_t j, CharClass cls) {
  while (j < n) {
    unsigned char c = s[j];
    if (c < 0x80) {
      if (kAscii[c] != cls) break;
      ++j;
      continue;
    }
    Symbol sym = next_symbol(s, n, j);
    if (sym.cls != cls) break;
    j += sym.len;
  }
  return j;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < kDirectLimit) return direct_table().cls[cp];
  return search_ranges(cp);
}

Symbol next_symbol(const unsigned char* s, size_t n, size_t i) {
  unsigned char c = s[i];
  if (c < 0x80) return {kAscii[c], 1};
  size_t left = n - i;
  if (c >= 0xC2 && c <= 0xDF) {
    if (left >= 2 && is_cont(s[i + 1])) return {char_class(((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu)), 2};
  } else if (c >= 0xE0 && c <= 0xEF) {
    if (left >= 3 && is_cont(s[i + 1]) && is_cont(s[i + 2])) {
      // E0 needs A0..BF (no overlong forms); ED needs 80..9F (no surrogates).
      bool ok = (c == 0xE0) ? s[i + 1] >= 0xA0 : (c == 0xED) ? s[i + 1] <= 0x9F : true;
      if (ok) {
        uint32_t cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
        return {char_class(cp), 3};
      }
    }
  } else if (c >= 0xF0 && c <= 0xF4) {
    if (left >= 4 && is_cont(s[i + 1]) && is_cont(s[i + 2]) && is_cont(s[i + 3])) {
      // F0 needs 90..BF (no overlong forms); F4 needs 80..8F (nothing past U+10FFFF).
      bool ok = (c == 0xF0) ? s[i + 1] >= 0x90 : (c == 0xF4) ? s[i + 1] <= 0x8F : true;
      if (ok) {
        uint32_t cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
        return {char_class(cp), 4};
      }
    }
  }
  return {kOther, 1};
}

size_t pretoken_end(const unsigned char* s, size_t n, size_t i) {
  unsigned char c = s[i];
  // Contractions come first in the alternation, and are case-sensitive like the original pattern.
  if (c == '\'' && i + 1 < n) {
    unsigned char d = s[i + 1];
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
    if (i + 2 < n && s[i + 2] == (d == 'l' ? 'l' : 'e') && (d == 'r' || d == 'v' || d == 'l')) return i + 3;
  }
  // " ?X+": a single ASCII space may lead a run of letters, numbers or other symbols.
  if (c == ' ' && i + 1 < n) {
    Symbol second = symbol_at(s, n, i + 1);
    if (second.cls != kSpace) return run_end(s, n, i + 1 + second.len, second.cls);
  }
  Symbol first = symbol_at(s, n, i);
  if (first.cls != kSpace) return run_end(s, n, i + first.len, first.cls);
  // Whitespace: \s+(?!\S) takes the run but gives back its last character when a non-space follows,
  // so that character can lead the next word; a lone space before a non-space falls to \s+.
  size_t last_start = i;
  size_t j = i + first.len;
  while (j < n) {
    Symbol sym = symbol_at(s, n, j);
    if (sym.cls != kSpace) break;
    last_start = j;
    j += sym.len;
  }
  if (j == n || last_start == i) return j;
  return last_start;
}

uint32_t byte_to_code_point(uint8_t b) {
  // Printable Latin-1 bytes stand for themselves; the other 68 take U+0100.. in byte order.
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (int v = 0; v < 256; ++v) {
      bool printable = (v >= 33 && v <= 126) || (v >= 161 && v <= 172) || (v >= 174 && v <= 255);
      t[v] = printable ? static_cast<uint32_t>(v) : next++;
    }
    return t;
  }();
  return table[b];
}

int code_point_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t{};
    t.fill(-1);
    for (int v = 0; v < 256; ++v) t[byte_to_code_point(static_cast<uint8_t>(v))] = static_cast<int16_t>(v);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string bytes_to_printable(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, byte_to_code_point(b));
  return out;
}

}  // namespace unicode

void gpt2_pretokenize(std::string_view text, const std::function<void(std::string_view)>& emit) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  for (size_t i = 0; i < n;) {
    size_t j = unicode::pretoken_end(s, n, i);
    emit(text.substr(i, j - i));
    i = j;
  }
}

}  // namespace meshtrain
