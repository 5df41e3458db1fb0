// The plain attention kernel's two products (scores q k^T and the weighted sum of values), forward
// and backward, through attention_product against LibTorch's batched product, sampled alternately
// in one run, at a translation batch's shapes (many short sequences) and a language model's.
#pragma once
#include <nlohmann/json.hpp>

#include <vector>

#include "moelab/bench/timing.h"

namespace moelab {

// Rows "attention": pairs (sequences x heads), query and key positions, head width, ms of each way
// and their ratio.
std::vector<nlohmann::json> bench_attention_products(const TimingOptions& timing);

}  // namespace moelab
