// Helpers shared by the fuzz targets (fuzz/*_fuzzer.cc): a reader of the fuzzer's bytes,
// a per-process scratch directory, and the fix-up that gives record frames valid
// checksums so that mutations reach the code behind the checksum check.
//
// Every target defines LLVMFuzzerTestOneInput; it is linked either with libFuzzer
// (FISHERD_FUZZ=ON, clang) or with replay_main.cc (the corpus-replay test of the normal
// build). A target reports a broken invariant with FUZZ_CHECK, which aborts.
#ifndef FISHERD_FUZZ_FUZZ_UTIL_H_
#define FISHERD_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

namespace fisherd::fuzz {

// Consumes the fuzzer's bytes front to back; past the end every read yields zeros/empty.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }
  bool empty() const { return pos_ >= size_; }

  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    const uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (uint16_t{U8()} << 8));
  }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{U8()} << (8 * i);
    return v;
  }
  // Up to n bytes (fewer at the end).
  std::string Bytes(size_t n) {
    if (n > remaining()) n = remaining();
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  // A section: a 16-bit little-endian length, then that many bytes.
  std::string Section() { return Bytes(U16()); }
  std::string Rest() { return Bytes(remaining()); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Whether FISHERD_FUZZ_VERBOSE is set: targets then print why an input was refused
// (to check that seeds reach deep).
bool Verbose();

// Appends a section as ByteReader::Section reads it (for the seed writer).
void AppendSection(absl::string_view bytes, std::string* out);

// A directory of this process's own, created once (under $TMPDIR, else /dev/shm when it
// exists, else /tmp), emptied by ResetScratch. Never removed while the process runs.
const std::string& ScratchDir();
// Removes everything under dir (not dir itself).
void RemoveContents(const std::string& dir);
// Writes bytes to path (replacing it); aborts when that fails (a broken harness).
void WriteFileOrDie(const std::string& path, absl::string_view bytes);

// Walks `file` as a sequence of record frames (storage/record_format.h) from offset 0
// and rewrites the checksum of each frame whose declared extent fits, so that the
// fuzzer's lengths, types, sequences and payloads are what the reader judges. Stops at
// the first frame that does not fit or has type 0.
void FixRecordChecksums(std::string* file);

}  // namespace fisherd::fuzz

#endif  // FISHERD_FUZZ_FUZZ_UTIL_H_
