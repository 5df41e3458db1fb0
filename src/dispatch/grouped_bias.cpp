#include "moelab/dispatch/grouped_bias.h"

#include <c10/util/BFloat16.h>
#include <torch/autograd.h>

#include <type_traits>

#include "moelab/dispatch/expert_loop.h"

namespace moelab {

namespace {

// Sums and sums of products in float (double for double operands): bf16 has 8 bits of mantissa.
template <typename T>
using Accumulator = std::conditional_t<std::is_same_v<T, double>, double, float>;

// out = activation(x + bias[e]) over each expert's block; the experts split over the cores.
template <typename X, typename B, typename O, bool kRelu>
void bias_forward(const X* x, const B* bias, O* out, const std::vector<int64_t>& rows_per_expert, int64_t width) {
  using Acc = Accumulator<O>;
  for_each_expert(rows_per_expert, /*parallel=*/true, [&](int64_t e, int64_t offset, int64_t rows) {
    const B* b = bias + e * width;
    for (int64_t r = offset; r < offset + rows; ++r) {
      const X* xr = x + r * width;
      O* o = out + r * width;
      for (int64_t j = 0; j < width; ++j) {
        Acc v = static_cast<Acc>(xr[j]) + static_cast<Acc>(b[j]);
        if constexpr (kRelu) v = v < Acc(0) ? Acc(0) : v;  // NaN stays NaN, as in torch::relu
        o[j] = static_cast<O>(v);
      }
    }
  });
}

// grad_x = grad masked where the ReLU was off (grad itself without ReLU, when grad_x is null) and
// grad_bias[e] = the column sums of expert e's block of grad_x, zeros for an expert without rows.
// `out` (the forward's result, for the ReLU mask) has the gradient's type G.
template <typename G, typename X, typename B, bool kRelu>
void bias_backward(const G* grad, const G* out, X* grad_x, B* grad_bias, const std::vector<int64_t>& rows_per_expert,
                   int64_t width) {
  using Acc = Accumulator<G>;
  for_each_expert(rows_per_expert, /*parallel=*/true, [&](int64_t e, int64_t offset, int64_t rows) {
    std::vector<Acc> sum(static_cast<size_t>(width), Acc(0));
    for (int64_t r = offset; r < offset + rows; ++r) {
      const G* g = grad + r * width;
      const G* o = kRelu ? out + r * width : nullptr;
      X* gx = grad_x ? grad_x + r * width : nullptr;
      for (int64_t j = 0; j < width; ++j) {
        Acc v = static_cast<Acc>(g[j]);
        if constexpr (kRelu) v = o[j] > G(0) ? v : Acc(0);
        if (gx) gx[j] = static_cast<X>(v);
        sum[j] += v;
      }
    }
    B* gb = grad_bias + e * width;
    for (int64_t j = 0; j < width; ++j) gb[j] = static_cast<B>(sum[j]);
  });
}

// The element types of one call: x, bias and the result (their promotion).
template <typename X, typename B>
struct Types {
  using x = X;
  using bias = B;
  using out = std::conditional_t<std::is_same_v<X, c10::BFloat16> && std::is_same_v<B, float>, float, X>;
};

// Runs fn(Types<X, B>{}) for the type pairs the fused kernels cover; false for the others.
template <typename Fn>
bool with_types(torch::ScalarType x, torch::ScalarType bias, Fn&& fn) {
  if (x == torch::kFloat && bias == torch::kFloat) return fn(Types<float, float>{}), true;
  if (x == torch::kDouble && bias == torch::kDouble) return fn(Types<double, double>{}), true;
  if (x == torch::kBFloat16 && bias == torch::kBFloat16) return fn(Types<c10::BFloat16, c10::BFloat16>{}), true;
  if (x == torch::kBFloat16 && bias == torch::kFloat) return fn(Types<c10::BFloat16, float>{}), true;
  return false;
}

class GroupedBias : public torch::autograd::Function<GroupedBias> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& bias,
                               const std::vector<int64_t>& rows_per_expert, bool relu) {
    const auto x_c = x.contiguous(), b_c = bias.contiguous();
    const int64_t width = x.size(1);
    torch::Tensor out = torch::empty(x.sizes(), x.options().dtype(torch::result_type(x, bias)));
    with_types(x.scalar_type(), bias.scalar_type(), [&](auto types) {
      using T = decltype(types);
      const auto* xp = x_c.data_ptr<typename T::x>();
      const auto* bp = b_c.data_ptr<typename T::bias>();
      auto* op = out.data_ptr<typename T::out>();
      if (relu)
        bias_forward<typename T::x, typename T::bias, typename T::out, true>(xp, bp, op, rows_per_expert, width);
      else
        bias_forward<typename T::x, typename T::bias, typename T::out, false>(xp, bp, op, rows_per_expert, width);
    });
    ctx->saved_data["rows"] = c10::IValue(rows_per_expert);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["x_type"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["bias_type"] = static_cast<int64_t>(bias.scalar_type());
    ctx->saved_data["experts"] = bias.size(0);
    if (relu) ctx->save_for_backward({out});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto rows_per_expert = ctx->saved_data["rows"].toIntVector();
    const bool relu = ctx->saved_data["relu"].toBool();
    const auto x_type = static_cast<torch::ScalarType>(ctx->saved_data["x_type"].toInt());
    const auto bias_type = static_cast<torch::ScalarType>(ctx->saved_data["bias_type"].toInt());
    const auto grad = grad_outputs[0].contiguous();  // [M, W], the result's type
    const int64_t width = grad.size(1);
    const torch::Tensor out = relu ? ctx->get_saved_variables()[0] : torch::Tensor();
    // Without ReLU the gradient of x is the incoming one: passed on as it is when the types agree.
    const bool pass_through = !relu && x_type == grad.scalar_type();
    torch::Tensor grad_x = pass_through ? grad : torch::empty(grad.sizes(), grad.options().dtype(x_type));
    auto grad_bias = torch::empty({ctx->saved_data["experts"].toInt(), width}, grad.options().dtype(bias_type));
    with_types(x_type, bias_type, [&](auto types) {
      using T = decltype(types);
      using G = typename T::out;
      const auto* gp = grad.data_ptr<G>();
      auto* gxp = pass_through ? nullptr : grad_x.data_ptr<typename T::x>();
      auto* gbp = grad_bias.data_ptr<typename T::bias>();
      if (relu)
        bias_backward<G, typename T::x, typename T::bias, true>(gp, out.data_ptr<G>(), gxp, gbp, rows_per_expert, width);
      else
        bias_backward<G, typename T::x, typename T::bias, false>(gp, nullptr, gxp, gbp, rows_per_expert, width);
    });
    return {grad_x, grad_bias, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor grouped_bias(const torch::Tensor& x, const torch::Tensor& bias, const DispatchPlan& plan,
                           BiasActivation activation) {
  TORCH_CHECK(x.dim() == 2 && bias.dim() == 2 && x.size(1) == bias.size(1), "grouped_bias: x ", x.sizes(),
              " and bias ", bias.sizes(), " must be [M, W] and [E, W]");
  TORCH_CHECK(static_cast<int64_t>(plan.rows_per_expert.size()) == bias.size(0), "grouped_bias: ",
              plan.rows_per_expert.size(), " row counts for ", bias.size(0), " experts");
  const bool fused = x.device().is_cpu() && bias.device().is_cpu() &&
                     with_types(x.scalar_type(), bias.scalar_type(), [](auto) {});
  if (!fused) return grouped_bias_reference(x, bias, plan.expert_of_row, activation);
  int64_t total = 0;
  for (auto rows : plan.rows_per_expert) total += rows;
  TORCH_CHECK(total == x.size(0), "grouped_bias: row counts sum to ", total, " but x has ", x.size(0), " rows");
  return GroupedBias::apply(x, bias, plan.rows_per_expert, activation == BiasActivation::kRelu);
}

torch::Tensor grouped_bias_reference(const torch::Tensor& x, const torch::Tensor& bias, const torch::Tensor& expert_of_row,
                                     BiasActivation activation) {
  const auto sum = x + bias.index_select(0, expert_of_row);
  return activation == BiasActivation::kRelu ? torch::relu(sum) : sum;
}

}  // namespace moelab
