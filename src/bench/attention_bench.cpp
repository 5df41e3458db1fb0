#include "moelab/bench/attention_bench.h"

#include <torch/torch.h>

#include <array>

#include "moelab/layers/causal_self_attention.h"

namespace moelab {

std::vector<nlohmann::json> bench_attention_products(const TimingOptions& timing) {
  std::vector<nlohmann::json> rows;
  // (pairs, query positions, key positions, head width): a Multi30k batch of ~400 sentences x 4
  // heads at two lengths, and a language model's 16 windows x 4 heads of 128 positions.
  for (const auto& [pairs, queries, keys, width] :
       std::vector<std::array<int64_t, 4>>{{1600, 20, 20, 64}, {1600, 30, 30, 64}, {64, 128, 128, 64}}) {
    torch::manual_seed(1);
    const auto q = torch::randn({pairs, queries, width}, torch::requires_grad());
    const auto k = torch::randn({pairs, keys, width}, torch::requires_grad());
    const auto v = torch::randn({pairs, keys, width}, torch::requires_grad());
    const auto grad = torch::randn({pairs, queries, width});
    auto both_products = [&](bool direct) {
      return [&, direct] {
        const auto product = [direct](const torch::Tensor& a, const torch::Tensor& b) {
          return direct ? attention_product(a, b) : torch::matmul(a, b);
        };
        const auto weights = torch::softmax(product(q, k.transpose(1, 2)), -1);
        product(weights, v).backward(grad);
        for (const auto& t : {q, k, v}) const_cast<torch::Tensor&>(t).mutable_grad().reset();
      };
    };
    const auto ms = interleaved_median_ms({both_products(true), both_products(false)}, timing);
    rows.push_back({{"case", "attention"},
                    {"experts", 0},
                    {"k", 0},
                    {"bank", "-"},
                    {"pairs", pairs},
                    {"queries", queries},
                    {"keys", keys},
                    {"head_width", width},
                    {"ms", ms[0]},
                    {"matmul_ms", ms[1]},
                    {"speedup", ms[1] / ms[0]},
                    {"dense_ms", 0.0},
                    {"ratio_vs_dense", 0.0}});
  }
  return rows;
}

}  // namespace moelab
