// The small session layouts the fuzz targets run against (and the seed writer writes
// batches for): dense, dense with float32 products, diagonal (centered, decayed), and a
// layered session with one block of each kind (Kronecker with bias, diagonal, dense,
// low-rank), and the registry limits of the targets that recover sessions. Dims stay tiny
// so that each input costs microseconds.
#ifndef FISHERD_FUZZ_LAYOUTS_H_
#define FISHERD_FUZZ_LAYOUTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "fisherd/v1/fisher.pb.h"
#include "server/session_registry.h"

namespace fisherd::fuzz {

// Limits small enough that a fuzzed log or snapshot naming a huge session is refused
// rather than allocated.
inline server::RegistryLimits SmallLimits() {
  server::RegistryLimits limits;
  limits.max_sessions = 4;
  limits.max_dense_dim = 32;
  limits.memory_budget_bytes = uint64_t{1} << 20;
  return limits;
}

struct FuzzLayout {
  std::string id;  // session id in the service target: "sessions/<id>"
  v1::SessionConfig config;
};

inline std::vector<FuzzLayout> FuzzLayouts() {
  std::vector<FuzzLayout> layouts;
  {
    FuzzLayout l{"dense", {}};
    l.config.set_dim(4);
    l.config.set_representation(v1::REPRESENTATION_DENSE);
    l.config.set_damping(0.01);
    layouts.push_back(l);
  }
  {
    FuzzLayout l{"dense32", {}};
    l.config.set_dim(3);
    l.config.set_representation(v1::REPRESENTATION_DENSE);
    l.config.set_float32_products(true);
    l.config.set_centered(true);
    layouts.push_back(l);
  }
  {
    FuzzLayout l{"diag", {}};
    l.config.set_dim(5);
    l.config.set_representation(v1::REPRESENTATION_DIAGONAL);
    l.config.set_centered(true);
    l.config.set_decay(0.9);
    layouts.push_back(l);
  }
  {
    FuzzLayout l{"layered", {}};
    l.config.set_representation(v1::REPRESENTATION_LAYERED);
    l.config.set_damping(0.1);
    v1::BlockConfig* k = l.config.add_blocks();
    k->set_name("fc");
    k->set_kind(v1::BLOCK_KIND_KRONECKER);
    k->set_in_features(3);
    k->set_out_features(2);
    k->set_bias(true);
    v1::BlockConfig* d = l.config.add_blocks();
    d->set_name("norm");
    d->set_kind(v1::BLOCK_KIND_DIAGONAL);
    d->set_dim(3);
    v1::BlockConfig* n = l.config.add_blocks();
    n->set_name("head");
    n->set_kind(v1::BLOCK_KIND_DENSE);
    n->set_dim(2);
    v1::BlockConfig* r = l.config.add_blocks();
    r->set_name("emb");
    r->set_kind(v1::BLOCK_KIND_LOW_RANK);
    r->set_dim(4);
    r->set_max_rows(2);
    layouts.push_back(l);
  }
  {
    FuzzLayout l{"factored", {}};
    l.config.set_representation(v1::REPRESENTATION_LAYERED);
    l.config.set_kronecker_damping(v1::KRONECKER_DAMPING_FACTORED);
    l.config.set_factor_refresh_period(2);
    l.config.set_damping(0.05);
    v1::BlockConfig* k = l.config.add_blocks();
    k->set_name("conv");
    k->set_kind(v1::BLOCK_KIND_KRONECKER);
    k->set_in_features(2);
    k->set_out_features(2);
    layouts.push_back(l);
  }
  return layouts;
}

}  // namespace fisherd::fuzz

#endif  // FISHERD_FUZZ_LAYOUTS_H_
