#include "moelab/dispatch/grouped_matmul.h"

#include <torch/autograd.h>

namespace moelab {

namespace {

void check_grouped_inputs(const torch::Tensor& x, const torch::Tensor& weight,
                          const std::vector<int64_t>& rows_per_expert) {
  TORCH_CHECK(x.dim() == 2, "grouped_matmul: x must be [M, I], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3, "grouped_matmul: weight must be [E, I, O], got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "grouped_matmul: x width ", x.size(1), " != weight input width ",
              weight.size(1));
  TORCH_CHECK(static_cast<int64_t>(rows_per_expert.size()) == weight.size(0), "grouped_matmul: ",
              rows_per_expert.size(), " row counts for ", weight.size(0), " experts");
  int64_t total = 0;
  for (auto rows : rows_per_expert) {
    TORCH_CHECK(rows >= 0, "grouped_matmul: negative row count");
    total += rows;
  }
  TORCH_CHECK(total == x.size(0), "grouped_matmul: row counts sum to ", total, " but x has ", x.size(0), " rows");
}

class GroupedMatmul : public torch::autograd::Function<GroupedMatmul> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const std::vector<int64_t>& rows_per_expert) {
    const auto x_c = x.contiguous();
    auto out = torch::empty({x.size(0), weight.size(2)}, x.options());  // [M, O]
    int64_t offset = 0;
    for (size_t e = 0; e < rows_per_expert.size(); ++e) {
      const int64_t rows = rows_per_expert[e];
      if (rows == 0) continue;
      auto out_rows = out.narrow(0, offset, rows);
      at::mm_out(out_rows, x_c.narrow(0, offset, rows), weight.select(0, static_cast<int64_t>(e)));
      offset += rows;
    }
    ctx->save_for_backward({x_c, weight});
    ctx->saved_data["rows"] = c10::IValue(rows_per_expert);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto rows_per_expert = ctx->saved_data["rows"].toIntVector();
    const auto grad_out = grad_outputs[0].contiguous();  // [M, O]

    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    torch::Tensor grad_x = need_x ? torch::empty_like(x) : torch::Tensor();
    // Experts with no rows keep a zero gradient.
    torch::Tensor grad_w = need_w ? torch::zeros_like(weight) : torch::Tensor();
    int64_t offset = 0;
    for (size_t e = 0; e < rows_per_expert.size(); ++e) {
      const int64_t rows = rows_per_expert[e];
      if (rows == 0) continue;
      const auto w_e = weight.select(0, static_cast<int64_t>(e));  // [I, O]
      const auto gy = grad_out.narrow(0, offset, rows);            // [rows, O]
      if (need_x) {
        auto gx = grad_x.narrow(0, offset, rows);
        at::mm_out(gx, gy, w_e.t());
      }
      if (need_w) {
        auto gw = grad_w.select(0, static_cast<int64_t>(e));
        at::mm_out(gw, x.narrow(0, offset, rows).t(), gy);
      }
      offset += rows;
    }
    return {grad_x, grad_w, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor grouped_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                             const std::vector<int64_t>& rows_per_expert) {
  check_grouped_inputs(x, weight, rows_per_expert);
  return GroupedMatmul::apply(x, weight, rows_per_expert);
}

torch::Tensor grouped_matmul_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                       const std::vector<int64_t>& rows_per_expert) {
  check_grouped_inputs(x, weight, rows_per_expert);
  std::vector<torch::Tensor> blocks;
  int64_t offset = 0;
  for (size_t e = 0; e < rows_per_expert.size(); ++e) {
    const int64_t rows = rows_per_expert[e];
    blocks.push_back(x.narrow(0, offset, rows).mm(weight[static_cast<int64_t>(e)]));
    offset += rows;
  }
  return torch::cat(blocks, 0);
}

}  // namespace moelab
