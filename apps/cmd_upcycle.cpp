// `moelab upcycle --from RUN_DIR --experts E --bank KIND [--rank r | --bond b] [--set k=v ...]
//  --out NEW_RUN`: a trained dense model turned into an MoE run at step 0, which
// `moelab train --out NEW_RUN --resume` then trains.
#include <fmt/format.h>

#include "commands.h"
#include "moelab/train/upcycle.h"

namespace moelab::cli {

namespace {
struct UpcycleArgs {
  UpcycleRequest request;
  int64_t rank = 0;
  int64_t bond = 0;
  bool json = false;
};
}  // namespace

void add_upcycle_command(CLI::App& app) {
  auto args = std::make_shared<UpcycleArgs>();
  auto* cmd = app.add_subcommand("upcycle", "Turn a trained dense run into an MoE run whose experts start from its FFN");
  cmd->add_option("--from", args->request.from_dir, "Trained run with a dense FFN (or one ffn expert)")->required();
  cmd->add_option("--experts", args->request.experts, "Number of experts E")->required();
  cmd->add_option("--bank", args->request.bank, "ffn, low_rank, mpo, lora or tensor_train")->capture_default_str();
  auto* rank = cmd->add_option("--rank", args->rank, "Rank for low_rank, lora and tensor_train (moe.rank)");
  cmd->add_option("--bond", args->bond, "Bond dimension for mpo (moe.bond)")->excludes(rank);
  cmd->add_option("--set", args->request.overrides, "Override a key of the new run: section.key=value (repeatable)");
  cmd->add_option("--out", args->request.out_dir, "New run directory")->required();
  cmd->add_option("--eval-max-tokens", args->request.eval_max_tokens,
                  "Evaluate before/after on at most this many valid tokens (0 = all)");
  cmd->add_flag("--force", args->request.force, "Replace a run already in --out");
  cmd->add_flag("--json", args->json, "Print the report as JSON");
  cmd->callback([args] {
    auto request = args->request;
    if (args->rank != 0) request.overrides.insert(request.overrides.begin(), fmt::format("moe.rank={}", args->rank));
    if (args->bond != 0) request.overrides.insert(request.overrides.begin(), fmt::format("moe.bond={}", args->bond));
    const auto report = upcycle_run(request);
    if (args->json) return fmt::print("{}\n", report.dump());
    fmt::print("upcycled {} (step {}) into {} {} experts (k = {}) in {}\n", request.from_dir,
               report["source_step"].get<int64_t>(), request.experts, request.bank, report["k"].get<int64_t>(),
               request.out_dir);
    // One MoE layer reports its matrices directly; several (a Transformer's blocks) per layer.
    const nlohmann::json& reconstruction = report["reconstruction"];
    const nlohmann::json layers =
        reconstruction.contains("w_in") ? nlohmann::json{{"", reconstruction}} : reconstruction;
    for (const auto& [layer, matrices] : layers.items())
      for (const std::string name : {"w_in", "w_out"}) {
        const auto& entry = matrices.at(name);
        fmt::print("  {}{} reconstruction error {:.3e} (relative Frobenius; singular values predict {:.3e})\n",
                   layer.empty() ? std::string() : layer + ".", name, entry.at("relative_error").get<double>(),
                   entry.at("predicted").get<double>());
      }
    fmt::print("  valid ppl: source {:.3f}, upcycled before training {:.3f} ({} tokens)\n",
               report["valid_ppl_source"].get<double>(), report["valid_ppl_upcycled"].get<double>(),
               report["valid_tokens"].get<int64_t>());
    fmt::print("  parameters {} total, {} active per token; compression vs ffn experts {:.2f}x\n",
               report["moe"]["params_total"].get<int64_t>(), report["moe"]["params_active_per_token"].get<int64_t>(),
               report["moe"]["compression_vs_ffn"].get<double>());
    fmt::print("continue with: moelab train --out {} --resume\n", request.out_dir);
  });
}

}  // namespace moelab::cli
