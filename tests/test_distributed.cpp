// Multi-process tests: two ranks on loopback, started the way a launcher would (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT). Skipped where no loopback port can be opened or moelab was built
// without Gloo.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "moelab/comm/communicator.h"
#include "moelab/dist/expert_exchange.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/train/run_dir.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::CommandResult;
using moelab::testing::dist_worker_executable;
using moelab::testing::make_corpus;
using moelab::testing::moelab_executable;
using moelab::testing::read_file;
using moelab::testing::run_moelab;
using moelab::testing::run_shell;
using moelab::testing::sq;
using moelab::testing::TempDir;
using moelab::testing::training_losses;

namespace {

// A port the kernel just handed out and took back: free now, very likely still free a moment later.
int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

#define SKIP_WITHOUT_LOOPBACK(port)                                                           \
  if (!moelab::distributed_backend_available()) GTEST_SKIP() << "built without Gloo";        \
  if ((port) == 0) GTEST_SKIP() << "no loopback port available"


// A shell line that starts `world` ranks of `command` (each with its own log rank<r>.log in
// `dir`), waits for all, and prints "rank <r> exit <code>" per rank.
// `guard` wraps each rank in timeout(1), so a bug that hangs fails the test instead of the suite.
std::string launch_ranks(int world, int port, const std::string& dir, const std::string& command, bool guard = true) {
  std::string script;
  for (int r = 0; r < world; ++r)
    script += "RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(world) + " LOCAL_RANK=" +
              std::to_string(r) + " LOCAL_WORLD_SIZE=" + std::to_string(world) +
              " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + (guard ? " timeout 300 " : " ") + command + " > " +
              sq(dir + "/rank" + std::to_string(r) + ".log") + " 2>&1 & p" + std::to_string(r) + "=$!; ";
  for (int r = 0; r < world; ++r)
    script += "wait $p" + std::to_string(r) + "; echo rank " + std::to_string(r) + " exit $?; ";
  return script;
}

void expect_all_ranks_succeeded(const CommandResult& result, int world, const std::string& dir) {
  for (int r = 0; r < world; ++r)
    EXPECT_NE(result.output.find("rank " + std::to_string(r) + " exit 0"), std::string::npos)
        << result.output << "\nrank " << r << " log:\n"
        << read_file(dir + "/rank" + std::to_string(r) + ".log");
}

// The expert shard files of `checkpoint` ("checkpoint.pt") in `run_dir`, oldest first.
std::vector<std::string> shard_files(const std::string& run_dir, const std::string& checkpoint = "checkpoint.pt") {
  namespace fs = std::filesystem;
  std::vector<fs::directory_entry> entries;
  for (const auto& entry : fs::directory_iterator(run_dir))
    if (entry.path().filename().string().rfind(checkpoint + ".experts-", 0) == 0) entries.push_back(entry);
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.last_write_time() < b.last_write_time(); });
  std::vector<std::string> names;
  for (const auto& e : entries) names.push_back(e.path().filename().string());
  return names;
}

double summary_value(const std::string& run_dir, const std::string& key) {
  return nlohmann::json::parse(read_file(run_dir + "/summary.json"))[key].get<double>();
}

void expect_near_relative(double got, double want, double tolerance, const std::string& what) {
  EXPECT_LE(std::abs(got - want), tolerance * std::max(1.0, std::abs(want))) << what << ": " << got << " vs " << want;
}

// Training losses of `run` step by step against those of `reference` (one process throughout).
void expect_same_losses(const std::string& reference, const std::string& run) {
  const auto want = training_losses(reference), got = training_losses(run);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    expect_near_relative(got[i], want[i], 1e-4, "training loss at step " + std::to_string(i + 1));
}

// A deterministic tiny model: no dropout, no router noise, no balancing loss (by default those are
// computed per rank, so only the task loss is exactly the single-process one).
std::string deterministic_flags(const std::string& corpus) {
  return "--quiet --set data.corpus=" + sq(corpus) +
         " --set model.embed=16 --set model.hidden=16 --set model.dropout=0 --set moe.experts=4 --set moe.k=2"
         " --set moe.expert_hidden=16 --set moe.noisy=false --set moe.balance.importance=0"
         " --set moe.balance.load=0 --set train.batch=4 --set train.bptt=8 --set train.steps=6"
         " --set train.threads=1 --set train.checkpoint_every=2 --set train.warmup=0 --set train.log_every=1"
         " --set train.optimizer=adam --set train.lr=0.01 --set train.eval_batch=4 --set train.dist_timeout=60";
}

TEST(Distributed, TheGraphOwnsWhatTheExchangeBackwardNeeds) {
  // A caller may keep an output (and its graph) after the layer that made it is gone: the graph must
  // own its share of the communicator and the timing record, not point at the dead layer's.
  torch::manual_seed(3);
  auto communicator = single_process_communicator();
  const std::weak_ptr<Communicator> watch = communicator;
  FfnExpertBank bank(FfnExpertBankOptions(6, 8, 4));
  auto x = torch::randn({5, 6}).requires_grad_(true);
  Routing routing;
  routing.expert_index = torch::tensor({0, 1, 2, 3, 1, 0, 3, 2, 0, 0}, torch::kInt64).view({5, 2});
  routing.gate_weight = torch::rand({5, 2}).requires_grad_(true);
  torch::Tensor y;
  {
    auto exchange = std::make_unique<ExpertExchange>(communicator, 4);
    const auto plan = exchange->plan(routing, 0.0, DropPolicy::kPosition);
    y = combine_rows(exchange->run(bank, x, plan), plan.dispatch);
    communicator.reset();
  }  // the exchange and the last handle outside the graph are gone
  EXPECT_FALSE(watch.expired());
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(bank.w_in.grad().defined());
  y = torch::Tensor();
  EXPECT_TRUE(watch.expired());  // the graph freed with the output releases it
}

TEST(Distributed, ExpertExchangeMatchesSingleProcess) {
  const int port = free_loopback_port();
  SKIP_WITHOUT_LOOPBACK(port);
  TempDir dir;
  const auto result = run_shell(launch_ranks(2, port, dir.path(), sq(dist_worker_executable()) + " exchange"));
  expect_all_ranks_succeeded(result, 2, dir.path());
  // Each case reported on both ranks: the checks ran, not just the process.
  const auto log = read_file(dir.file("rank1.log"));
  for (const char* name : {"uneven splits checked", "an expert with no tokens checked", "every token to rank 0 checked",
                           "capacity 0.75 checked", "layer checked"})
    EXPECT_NE(log.find(name), std::string::npos) << log;
}

// W = 2 with data or expert parallelism trains like one process on the same global batch; the
// run it leaves evaluates the same in one process.
class ParallelTraining : public ::testing::TestWithParam<const char*> {};

TEST_P(ParallelTraining, MatchesSingleProcessWithTheSameGlobalBatch) {
  const int port = free_loopback_port();
  SKIP_WITHOUT_LOOPBACK(port);
  TempDir dir;
  make_corpus(dir.file("corpus"));
  const std::string flags = deterministic_flags(dir.file("corpus")) + " --set moe.parallel=" + GetParam();
  const auto single = run_moelab("train " + flags + " --out " + sq(dir.file("one")));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const auto two = run_shell(launch_ranks(2, port, dir.path(),
                                          sq(moelab_executable()) + " train " + flags + " --out " + sq(dir.file("two"))));
  expect_all_ranks_succeeded(two, 2, dir.path());

  ASSERT_EQ(training_losses(dir.file("one")).size(), 6u);
  expect_same_losses(dir.file("one"), dir.file("two"));
  const double valid_two = summary_value(dir.file("two"), "valid_ppl");
  expect_near_relative(valid_two, summary_value(dir.file("one"), "valid_ppl"), 1e-4, "valid perplexity");
  EXPECT_EQ(summary_value(dir.file("two"), "ranks"), 2);

  // The checkpoint of the two-rank run, read by one process.
  const auto eval = run_moelab("eval --json --run " + sq(dir.file("two")));
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  expect_near_relative(nlohmann::json::parse(eval.output)["ppl"].get<double>(), valid_two, 1e-5,
                       "one-process eval of the two-rank checkpoint");
}

INSTANTIATE_TEST_SUITE_P(Modes, ParallelTraining, ::testing::Values("data", "expert"));

// Global-batch balancing (issue 19 item 2): with the importance and switch losses on, two ranks
// pooling their expert sums train like one process on the whole batch; balancing each rank's half on
// its own (the per-batch default) trains differently.
TEST(Distributed, GlobalBatchBalancingOnTwoRanksMatchesOneProcess) {
  const int port = free_loopback_port();
  SKIP_WITHOUT_LOOPBACK(port);
  TempDir dir;
  make_corpus(dir.file("corpus"));
  const std::string flags = deterministic_flags(dir.file("corpus")) +
                            " --set moe.router=topk_mask --set moe.balance.importance=2 --set moe.balance.switch=1 --set train.lr=0.03";
  const auto single = run_moelab("train " + flags + " --out " + sq(dir.file("one")));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  for (const std::string scope : {"global", "batch"}) {
    SCOPED_TRACE(scope);
    const auto two = run_shell(launch_ranks(2, port, dir.path(),
                                            sq(moelab_executable()) + " train " + flags + " --set moe.balance.scope=" +
                                                scope + " --out " + sq(dir.file(scope))));
    expect_all_ranks_succeeded(two, 2, dir.path());
  }
  auto largest_difference = [&](const std::string& run, const std::string& key) {
    const auto one = training_losses(dir.file("one"), key), other = training_losses(dir.file(run), key);
    EXPECT_EQ(other.size(), one.size());
    double largest = 0;
    for (size_t i = 0; i < std::min(one.size(), other.size()); ++i)
      largest = std::max(largest, std::abs(one[i] - other[i]) / std::abs(one[i]));
    return largest;
  };
  // The balancing losses themselves, and the task losses they steer, step by step.
  for (const std::string key : {"aux_loss", "loss"}) {
    SCOPED_TRACE(key);
    const double global = largest_difference("global", key), batch = largest_difference("batch", key);
    EXPECT_LT(global, 1e-5);
    // Far beyond the global run's difference, or the comparison could not tell the two apart.
    EXPECT_GT(batch, 5 * std::max(global, 1e-6)) << "per-rank balancing trained like the global batch";
    std::printf("%s: relative difference to one process: global %.2e, batch %.2e\n", key.c_str(), global, batch);
  }
}

// Aux-loss-free biases move by the load of the global batch (every rank's tokens), so two
// expert-parallel ranks keep one bias and train like one process; with the bias frozen the same
// run trains differently, so the comparison does see the biases.
TEST(Distributed, AuxFreeBiasesFollowTheGlobalLoadOnEveryRank) {
  const int port = free_loopback_port();
  SKIP_WITHOUT_LOOPBACK(port);
  TempDir dir;
  make_corpus(dir.file("corpus"));
  const std::string flags = deterministic_flags(dir.file("corpus")) +
                            " --set moe.router=aux_free --set moe.parallel=expert --set moe.experts=8 --set moe.bias_update_rate=0.0001";
  const auto single = run_moelab("train " + flags + " --out " + sq(dir.file("one")));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const auto frozen = run_moelab("train " + flags + " --set moe.bias_update_rate=0 --out " + sq(dir.file("frozen")));
  ASSERT_EQ(frozen.exit_code, 0) << frozen.output;
  EXPECT_NE(training_losses(dir.file("one")), training_losses(dir.file("frozen")));
  const auto two = run_shell(launch_ranks(2, port, dir.path(),
                                          sq(moelab_executable()) + " train " + flags + " --out " + sq(dir.file("two"))));
  expect_all_ranks_succeeded(two, 2, dir.path());
  expect_same_losses(dir.file("one"), dir.file("two"));
  expect_near_relative(summary_value(dir.file("two"), "valid_ppl"), summary_value(dir.file("one"), "valid_ppl"), 1e-4,
                       "valid perplexity");
  // The biases themselves: steps of +-1e-4 from the same global loads, so equal to the bit (a rank
  // moving them by its own half of the batch ends elsewhere).
  const auto biases = [&](const std::string& run) {
    const auto loaded = moelab::load_run(dir.file(run));
    for (const auto& item : loaded.model->named_buffers())
      if (item.key().find("expert_bias") != std::string::npos) return item.value().clone();
    return torch::Tensor();
  };
  const auto bias_one = biases("one"), bias_two = biases("two");
  ASSERT_TRUE(bias_one.defined());
  EXPECT_GT(bias_one.abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(bias_one, bias_two)) << bias_one << bias_two;
  // The biases are checkpointed state: stopped on two ranks at step 4, resumed in one process, the
  // run still matches (a resumed run that restarted its biases at zero would not).
  const auto stopped = run_shell(launch_ranks(
      2, port, dir.path(),
      sq(moelab_executable()) + " train " + flags + " --set debug.nan_at_step=5 --out " + sq(dir.file("resumed"))));
  EXPECT_NE(stopped.output.find("rank 0 exit 1"), std::string::npos) << stopped.output;
  const auto resumed =
      run_moelab("train " + flags + " --set debug.nan_at_step=0 --resume --out " + sq(dir.file("resumed")));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_losses(dir.file("one"), dir.file("resumed"));
}

// The resharding tests: an expert-parallel run trained in one process throughout, in dir/one, as
// the reference a run stopped and resumed on another number of ranks must match.
class Resharding : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_LOOPBACK(port);
    make_corpus(dir.file("corpus"));
    flags = deterministic_flags(dir.file("corpus")) + " --set moe.parallel=expert";
    const auto single = run_moelab("train " + flags + " --out " + sq(dir.file("one")));
    ASSERT_EQ(single.exit_code, 0) << single.output;
  }
  const int port = free_loopback_port();
  TempDir dir;
  std::string flags;
};

// A run stopped on 2 ranks (a NaN at step 5 keeps the step-4 checkpoint) resumes on 1 rank and
// finishes with the figures of a run trained on 1 rank throughout: the checkpoint reshards
// experts, optimizer state and the LSTM state's batch columns.
TEST_F(Resharding, CheckpointFromTwoRanksResumesOnOne) {
  const auto stopped = run_shell(launch_ranks(
      2, port, dir.path(),
      sq(moelab_executable()) + " train " + flags + " --set debug.nan_at_step=5 --out " + sq(dir.file("two"))));
  EXPECT_NE(stopped.output.find("rank 0 exit 1"), std::string::npos) << stopped.output;
  EXPECT_NE(read_file(dir.file("rank0.log")).find("last good checkpoint (step 4)"), std::string::npos)
      << read_file(dir.file("rank0.log"));
  // Each rank wrote its own experts: two shards for the step-4 checkpoint and two for the step-2
  // one it keeps as the fallback; the main file holds none.
  const auto shards = shard_files(dir.file("two"));
  ASSERT_EQ(shards.size(), 4u) << ::testing::PrintToString(shards);
  for (const char* experts : {".experts-0-2-", ".experts-2-2-"})  // first expert, count
    EXPECT_EQ(std::count_if(shards.begin(), shards.end(),
                            [&](const std::string& f) { return f.find(experts) != std::string::npos; }),
              2);
  const auto resumed = run_moelab("train " + flags + " --set debug.nan_at_step=0 --resume --out " + sq(dir.file("two")));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_losses(dir.file("one"), dir.file("two"));
  expect_near_relative(summary_value(dir.file("two"), "valid_ppl"), summary_value(dir.file("one"), "valid_ppl"), 1e-4,
                       "valid perplexity after resharding");
}

// SIGTERM reaching one rank only (rank 1, as step 3 starts; checkpoints are due every 2 steps):
// the request travels with that step's loss figures, so both ranks finish step 3, write its
// sharded checkpoint together and end by the signal; resumed on one rank, the run is the run
// trained on one rank throughout.
TEST_F(Resharding, SigtermOnOneRankStopsEveryRankAtTheSameCheckpointedStep) {
  const std::string one_rank_signal = "$([ \"$RANK\" = 1 ] && echo --set debug.signal_at_step=3)";
  const auto stopped = run_shell(launch_ranks(
      2, port, dir.path(),
      "sh -c " + sq("exec " + sq(moelab_executable()) + " train " + flags + " " + one_rank_signal + " --out " +
                    sq(dir.file("two")))));
  for (int r = 0; r < 2; ++r)
    EXPECT_NE(stopped.output.find("rank " + std::to_string(r) + " exit 143"), std::string::npos)
        << stopped.output << "\nrank " << r << " log:\n" << read_file(dir.file("rank" + std::to_string(r) + ".log"));
  EXPECT_NE(read_file(dir.file("rank0.log")).find("stopped by SIGTERM after step 3"), std::string::npos)
      << read_file(dir.file("rank0.log"));
  const auto shards = shard_files(dir.file("two"));
  ASSERT_EQ(shards.size(), 4u) << ::testing::PrintToString(shards);  // steps 2 and 3, two ranks each
  const auto resumed = run_moelab("train " + flags + " --resume --out " + sq(dir.file("two")));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(nlohmann::json::parse(read_file(dir.file("two/summary.json")))["tokens_trained_this_session"].get<int64_t>(),
            3 * 4 * 8)
      << "steps 4 to 6 only";
  expect_same_losses(dir.file("one"), dir.file("two"));
  expect_near_relative(summary_value(dir.file("two"), "valid_ppl"), summary_value(dir.file("one"), "valid_ppl"), 1e-4,
                       "valid perplexity after a stop on one rank");
}

// The reverse: a run stopped on 1 rank resumes on 2, each rank reading its experts from the whole
// tensors; the two ranks' checkpoints then hold shards. A damaged newest shard makes `moelab eval`
// fall back to the previous checkpoint with a warning.
TEST_F(Resharding, CheckpointFromOneRankResumesOnTwo) {
  const auto stopped = run_moelab("train " + flags + " --set debug.nan_at_step=3 --out " + sq(dir.file("run")));
  ASSERT_NE(stopped.exit_code, 0) << stopped.output;
  EXPECT_TRUE(shard_files(dir.file("run")).empty());
  const auto resumed = run_shell(launch_ranks(
      2, port, dir.path(),
      sq(moelab_executable()) + " train " + flags + " --set debug.nan_at_step=0 --resume --out " + sq(dir.file("run"))));
  expect_all_ranks_succeeded(resumed, 2, dir.path());
  expect_same_losses(dir.file("one"), dir.file("run"));
  const auto shards = shard_files(dir.file("run"));
  ASSERT_EQ(shards.size(), 4u) << ::testing::PrintToString(shards);  // steps 4 and 6

  // One flipped byte in the newest shard's tensor data: the newest checkpoint is refused in one line
  // and the previous one used.
  const auto newest = dir.file("run/" + shards.back());
  {
    std::fstream file(newest, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(std::filesystem::file_size(newest) / 2));
    const char byte = static_cast<char>(file.get() ^ 0x10);
    file.seekp(static_cast<std::streamoff>(std::filesystem::file_size(newest) / 2));
    file.put(byte);
  }
  const auto eval = run_moelab("eval --json --run " + sq(dir.file("run")));
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  EXPECT_NE(eval.output.find("expert shard"), std::string::npos) << eval.output;
  EXPECT_NE(eval.output.find("using the previous checkpoint"), std::string::npos) << eval.output;
}

// Killing one rank mid-run: the other stops within the timeout with a message naming it, and the
// last checkpoint still loads.
TEST(Distributed, KilledRankStopsTheSurvivorWithItsName) {
  const int port = free_loopback_port();
  SKIP_WITHOUT_LOOPBACK(port);
  TempDir dir;
  make_corpus(dir.file("corpus"));
  const std::string flags = deterministic_flags(dir.file("corpus")) +
                            " --set moe.parallel=expert --set train.steps=100000 --set train.dist_timeout=20";
  const std::string run = dir.file("run");
  // No timeout(1) wrapper: the kill must reach moelab itself.
  std::string script =
      launch_ranks(2, port, dir.path(), sq(moelab_executable()) + " train " + flags + " --out " + sq(run), false);
  // Instead of waiting for both: wait for the first checkpoint, kill rank 1, time rank 0's exit.
  script = script.substr(0, script.find("wait $p0"));
  script += "for i in $(seq 600); do [ -f " + sq(run + "/checkpoint.pt") + " ] && break; sleep 0.1; done; "
            "kill -9 $p1; start=$(date +%s.%N); wait $p0; code=$?; end=$(date +%s.%N); "
            "echo survivor exit $code after $(awk \"BEGIN{print $end - $start}\") s; kill -9 $p0 2>/dev/null; true";
  const auto result = run_shell(script);
  const auto log = read_file(dir.file("rank0.log"));
  EXPECT_EQ(result.output.find("survivor exit 0"), std::string::npos) << result.output << log;
  EXPECT_NE(log.find("rank 1 stopped responding"), std::string::npos) << log;
  const auto seconds_at = result.output.find(" after ");
  ASSERT_NE(seconds_at, std::string::npos) << result.output;
  EXPECT_LT(std::stod(result.output.substr(seconds_at + 7)), 20.0) << result.output;
  const auto eval = run_moelab("eval --run " + sq(run));
  EXPECT_EQ(eval.exit_code, 0) << eval.output;
}

TEST(Distributed, LaunchVariablesAreChecked) {
  const auto bad_rank = run_shell("RANK=2 WORLD_SIZE=2 " + sq(moelab_executable()) + " train --quiet --out /tmp/x 2>&1");
  EXPECT_NE(bad_rank.output.find("RANK 2 is outside [0, WORLD_SIZE = 2)"), std::string::npos) << bad_rank.output;
  const auto bad_port = run_shell("RANK=0 WORLD_SIZE=2 MASTER_PORT=http " + sq(moelab_executable()) +
                                  " train --quiet --out /tmp/x 2>&1");
  EXPECT_NE(bad_port.output.find("MASTER_PORT='http' is not an integer"), std::string::npos) << bad_port.output;
}

}  // namespace
