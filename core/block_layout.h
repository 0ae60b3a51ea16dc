// BlockLayout: where each block of a layered session sits in the parameter vector, and
// the lookup of a block by name (every score batch names its block).
//
// Immutable after construction, so it is read without any lock.
#ifndef FISHERD_CORE_BLOCK_LAYOUT_H_
#define FISHERD_CORE_BLOCK_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "core/options.h"

namespace fisherd {

class BlockLayout {
 public:
  // Empty for a session without blocks. REQUIRES: LayeredDim(blocks).ok().
  explicit BlockLayout(const std::vector<BlockOptions>& blocks);

  int64_t size() const { return static_cast<int64_t>(blocks_.size()); }
  bool empty() const { return blocks_.empty(); }
  const BlockOptions& block(int64_t i) const { return blocks_[i]; }
  // Index of the block's first parameter; offset(size()) is the total.
  int64_t offset(int64_t i) const { return offsets_[i]; }
  int64_t parameters(int64_t i) const { return offsets_[i + 1] - offsets_[i]; }

  // The index of the block named `name`, or -1.
  int64_t Find(absl::string_view name) const;
  // The index of the block that holds `parameter`. REQUIRES: 0 <= parameter < total.
  int64_t BlockAt(int64_t parameter) const;

 private:
  std::vector<BlockOptions> blocks_;
  std::vector<int64_t> offsets_;  // size() + 1 entries
  absl::flat_hash_map<std::string, int64_t> index_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_BLOCK_LAYOUT_H_
