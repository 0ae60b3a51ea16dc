#include "fuzz/fuzz_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "storage/record_format.h"

namespace fisherd::fuzz {

bool Verbose() {
  static const bool verbose = std::getenv("FISHERD_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

void AppendSection(absl::string_view bytes, std::string* out) {
  const size_t n = bytes.size() > 0xffff ? 0xffff : bytes.size();
  out->push_back(static_cast<char>(n & 0xff));
  out->push_back(static_cast<char>(n >> 8));
  out->append(bytes.data(), n);
}

const std::string& ScratchDir() {
  static const std::string* dir = [] {
    std::string base;
    if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') {
      base = tmp;
    } else if (access("/dev/shm", W_OK) == 0) {
      base = "/dev/shm";  // tmpfs: the targets that fsync stay fast
    } else {
      base = "/tmp";
    }
    std::string templ = base + "/fisherd-fuzz-XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    return new std::string(templ);
  }();
  return *dir;
}

void RemoveContents(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::filesystem::remove_all(entry.path(), ec);
  }
}

void WriteFileOrDie(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
}

void FixRecordChecksums(std::string* file) {
  size_t pos = 0;
  while (pos + kRecordHeaderSize <= file->size()) {
    char* header = file->data() + pos;
    uint32_t length = 0;
    for (int i = 0; i < 4; ++i) length |= uint32_t{static_cast<uint8_t>(header[8 + i])} << (8 * i);
    if (header[12] == 0 || length > file->size() - pos - kRecordHeaderSize) return;
    const uint64_t checksum =
        RecordChecksum(header, absl::string_view(header + kRecordHeaderSize, length));
    for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((checksum >> (8 * i)) & 0xff);
    pos += kRecordHeaderSize + length;
  }
}

}  // namespace fisherd::fuzz
