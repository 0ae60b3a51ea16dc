#include "core/block_layout.h"

#include <algorithm>

namespace fisherd {

BlockLayout::BlockLayout(const std::vector<BlockOptions>& blocks) : blocks_(blocks) {
  offsets_.reserve(blocks.size() + 1);
  offsets_.push_back(0);
  index_.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    offsets_.push_back(offsets_.back() + blocks[i].ParameterCount());
    index_.emplace(blocks[i].name, static_cast<int64_t>(i));
  }
}

int64_t BlockLayout::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

int64_t BlockLayout::BlockAt(int64_t parameter) const {
  // The last offset not above `parameter`; blocks have at least one parameter each.
  auto it = std::upper_bound(offsets_.begin(), offsets_.end(), parameter);
  return static_cast<int64_t>(it - offsets_.begin()) - 1;
}

}  // namespace fisherd
