#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/bench/operator_profile.h"
#include "moelab/util/error.h"

#include <algorithm>

using moelab::OperatorProfile;

namespace {

const moelab::OperatorTime* find(const OperatorProfile& profile, const std::string& name) {
  const auto it = std::find_if(profile.operators.begin(), profile.operators.end(),
                               [&](const auto& op) { return op.name == name; });
  return it == profile.operators.end() ? nullptr : &*it;
}

}  // namespace

// A hand-made trace of two runs: on thread 1, mm (10 us) holds two nested calls, one of which holds
// a third; a later add is top level; thread 2's event counts as top level on its own thread. Events
// come out of order, as LibTorch writes them (a parent after its children).
TEST(OperatorProfile, SelfTimeExcludesNestedEventsOnTheSameThread) {
  const std::string trace = R"([
    {"name": "empty", "ph": "X", "ts": 2, "dur": 1, "tid": 1},
    {"name": "copy_", "ph": "X", "ts": 4, "dur": 4, "tid": 1},
    {"name": "empty", "ph": "X", "ts": 5, "dur": 2, "tid": 1},
    {"name": "mm", "ph": "X", "ts": 1, "dur": 10, "tid": 1},
    {"name": "add", "ph": "X", "ts": 11, "dur": 3, "tid": 1},
    {"name": "mm", "ph": "X", "ts": 1, "dur": 6, "tid": 2},
    {"name": "ignored", "ph": "i", "ts": 1, "tid": 1}
  ])";
  const auto profile = moelab::summarize_operator_trace(trace, /*repeats=*/2, /*wall_ms=*/0.05);
  ASSERT_EQ(profile.operators.size(), 4u);
  const auto* mm = find(profile, "mm");
  ASSERT_NE(mm, nullptr);
  EXPECT_DOUBLE_EQ(mm->calls, 1.0);                   // two calls over two runs
  EXPECT_DOUBLE_EQ(mm->total_ms, (10 + 6) / 2 / 1e3);
  EXPECT_DOUBLE_EQ(mm->self_ms, (10 - 1 - 4 + 6) / 2.0 / 1e3);  // the nested empty inside copy_ is copy_'s
  const auto *copy = find(profile, "copy_"), *empty = find(profile, "empty"), *add = find(profile, "add");
  ASSERT_TRUE(copy && empty && add);
  EXPECT_DOUBLE_EQ(copy->self_ms, (4 - 2) / 2.0 / 1e3);
  EXPECT_DOUBLE_EQ(empty->total_ms, 3 / 2.0 / 1e3);
  EXPECT_DOUBLE_EQ(add->self_ms, 3 / 2.0 / 1e3);  // touching mm's end, not inside it
  EXPECT_DOUBLE_EQ(profile.leaf_calls, 4 / 2.0);    // both empties, add, thread 2's mm
  EXPECT_DOUBLE_EQ(profile.top_level_ms, (10 + 3 + 6) / 2.0 / 1e3);
  EXPECT_DOUBLE_EQ(profile.wall_ms, 0.025);
  EXPECT_EQ(profile.operators.front().name, "mm");  // largest self time first
  EXPECT_THROW(moelab::summarize_operator_trace("not json", 1, 1.0), moelab::Error);
}

// The real profiler around real work: the operators it ran are there, and the table names them.
TEST(OperatorProfile, ProfilesLibTorchOperators) {
  const auto a = torch::randn({32, 32});
  const auto profile = moelab::profile_operators([&] { (void)torch::mm(a, a).relu().sum(); }, /*repeats=*/3);
  const auto* mm = find(profile, "aten::mm");
  ASSERT_NE(mm, nullptr);
  EXPECT_DOUBLE_EQ(mm->calls, 1.0);
  EXPECT_GT(profile.wall_ms, 0.0);
  EXPECT_LE(mm->self_ms, mm->total_ms);
  const auto table = moelab::operator_profile_markdown(profile, 5);
  EXPECT_NE(table.find("| aten::mm | 1 |"), std::string::npos) << table;
  EXPECT_NE(table.find("wall "), std::string::npos) << table;
  const auto hand_made = moelab::operator_profile_markdown(
      moelab::summarize_operator_trace(R"([{"name": "a", "ph": "X", "ts": 0, "dur": 3, "tid": 1},
                                           {"name": "b", "ph": "X", "ts": 0, "dur": 1, "tid": 1}])",
                                       1, 1.0),
      1);
  EXPECT_NE(hand_made.find("2 operator calls, 1 of them calling no other"), std::string::npos) << hand_made;
  EXPECT_EQ(hand_made.find("| b |"), std::string::npos) << hand_made;  // one row asked for
}
