// Chains of tensor cores (tensor trains / matrix product operators): the bond sizes a chain can
// use and the contraction of a chain back into one tensor. Shared by the mpo and tensor_train
// banks and by the MPO decomposition.
//
// A core is [a, n, b]: left bond a, a physical (mode) index n, right bond b. A stack of E cores,
// one per expert, is [E, a, n, b]; shared and stacked cores mix freely in one chain.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

// Bond sizes b_1..b_{n-1} of a chain over modes of the given sizes: b_k = min(max_bond, product of
// the modes left of the bond, product of the modes right of it). The outer bonds b_0 = b_n = 1 are
// not listed. At max_bond >= every such product the chain can represent any tensor exactly.
std::vector<int64_t> chain_bond_sizes(const std::vector<int64_t>& mode_sizes, int64_t max_bond);

// The same with the outer bonds b_0 = b_n = 1 included: n + 1 sizes, core k being
// [b_k, m_k, b_{k+1}].
std::vector<int64_t> chain_bond_sizes_with_ends(const std::vector<int64_t>& mode_sizes, int64_t max_bond);

// Contracts cores [a_k, n_k, a_{k+1}] (or stacked [E, a_k, n_k, a_{k+1}]) over their shared bonds.
// Returns [a_0, n_1 * ... * n_K, a_K], with a leading [E] when any core is stacked; the mode index
// is row-major (n_1 slowest).
torch::Tensor contract_chain(const std::vector<torch::Tensor>& cores);

// Multiply-add FLOPs (x 2) contract_chain spends on one chain of cores with these mode sizes and
// bonds a_0..a_n (outer ones included), contracted left to right.
int64_t chain_contraction_flops(const std::vector<int64_t>& mode_sizes, const std::vector<int64_t>& bonds);

// Rejects a factor list that is empty, has a factor < 1, or does not multiply to `size`; `what`
// names the config key in the message.
void check_factorisation(const std::vector<int64_t>& factors, int64_t size, const std::string& what);

// Product of a factor list.
int64_t product(const std::vector<int64_t>& factors);

}  // namespace moelab
