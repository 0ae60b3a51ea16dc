// peer-blas: the in-process OpenBLAS / LAPACK figures fisherd is compared against.
//
//   peer-blas syrk  --dim=N --batch=B --seconds=S [--threads=T]
//       float64 scores (already widened) accumulated with one dsyrk per batch into a
//       dim x dim matrix: what a user gets by doing the ingest in their own process.
//   peer-blas solve --dim=N --repeats=R [--threads=T]
//       a new factorization (dpotrf of F + lambda I, copied from F first) plus two
//       triangular solves, and the two triangular solves alone.
// The last line is one JSON object. --threads calls openblas_set_num_threads (default:
// OpenBLAS's own choice, all cores).
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return fallback;
}

int Syrk(int dim, int batch, double seconds) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal;
  std::vector<double> scores(static_cast<size_t>(dim) * batch);
  for (double& v : scores) v = static_cast<float>(normal(rng));
  std::vector<double> f(static_cast<size_t>(dim) * dim, 0.0);
  auto one = [&] {
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, dim, batch, 1.0, scores.data(), dim, 1.0,
                f.data(), dim);
  };
  one();  // warm-up: threads, pages
  int64_t batches = 0;
  const auto start = Clock::now();
  double elapsed = 0.0;
  while (elapsed < seconds) {
    one();
    ++batches;
    elapsed = Seconds(Clock::now() - start);
  }
  const double rate = batches * batch / elapsed;
  std::printf("dsyrk dim %d batch %d threads %d: %.0f scores/s\n", dim, batch,
              openblas_get_num_threads(), rate);
  std::printf(
      "{\"peer\":\"openblas_dsyrk\",\"dim\":%d,\"batch\":%d,\"threads\":%d,"
      "\"scores_per_second\":%.1f}\n",
      dim, batch, openblas_get_num_threads(), rate);
  return 0;
}

int Solve(int dim, int repeats) {
  std::mt19937_64 rng(2);
  std::normal_distribution<double> normal;
  // An SPD F: S^T S / n + lambda I from n = dim random rows.
  std::vector<double> s(static_cast<size_t>(dim) * dim);
  for (double& v : s) v = normal(rng);
  std::vector<double> f(static_cast<size_t>(dim) * dim, 0.0);
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, dim, dim, 1.0 / dim, s.data(), dim, 0.0,
              f.data(), dim);
  for (int i = 0; i < dim; ++i) f[static_cast<size_t>(i) * dim + i] += 1e-3;
  std::vector<double> factor(f.size()), g(dim), x(dim);
  for (double& v : g) v = normal(rng);

  std::vector<double> full, solves;
  for (int r = 0; r < repeats + 1; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(factor.data(), f.data(), f.size() * sizeof(double));
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', dim, factor.data(), dim) != 0) return 1;
    x = g;
    cblas_dtrsv(CblasColMajor, CblasLower, CblasNoTrans, CblasNonUnit, dim, factor.data(), dim,
                x.data(), 1);
    cblas_dtrsv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit, dim, factor.data(), dim,
                x.data(), 1);
    const auto t1 = Clock::now();
    x = g;
    cblas_dtrsv(CblasColMajor, CblasLower, CblasNoTrans, CblasNonUnit, dim, factor.data(), dim,
                x.data(), 1);
    cblas_dtrsv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit, dim, factor.data(), dim,
                x.data(), 1);
    const auto t2 = Clock::now();
    if (r == 0) continue;
    full.push_back(Seconds(t1 - t0));
    solves.push_back(Seconds(t2 - t1));
  }
  std::printf("dim %d threads %d: copy + dpotrf + 2 dtrsv %.4f s, 2 dtrsv %.5f s (medians)\n", dim,
              openblas_get_num_threads(), Median(full), Median(solves));
  std::printf(
      "{\"peer\":\"lapack_solve\",\"dim\":%d,\"threads\":%d,\"repeats\":%d,"
      "\"factor_and_solve_seconds\":%.6f,\"two_solves_seconds\":%.6f}\n",
      dim, openblas_get_num_threads(), repeats, Median(full), Median(solves));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::string(argv[1]) != "syrk" && std::string(argv[1]) != "solve")) {
    std::fprintf(stderr,
                 "usage: peer-blas syrk --dim=N --batch=B --seconds=S [--threads=T]\n"
                 "       peer-blas solve --dim=N --repeats=R [--threads=T]\n");
    return 2;
  }
  const int threads = std::stoi(Flag(argc, argv, "threads", "0"));
  if (threads > 0) openblas_set_num_threads(threads);
  const int dim = std::stoi(Flag(argc, argv, "dim", "1024"));
  if (std::string(argv[1]) == "syrk") {
    return Syrk(dim, std::stoi(Flag(argc, argv, "batch", "256")),
                std::stod(Flag(argc, argv, "seconds", "3")));
  }
  return Solve(dim, std::stoi(Flag(argc, argv, "repeats", "5")));
}
