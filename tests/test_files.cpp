// The file helpers under everything a run writes: the stream checksum of checkpoints, atomic
// writes that leave no temporary file, and shell quoting of paths.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "moelab/util/files.h"
#include "moelab/util/error.h"
#include "moelab/util/stream_checksum.h"
#include "test_util.h"

using namespace moelab;

TEST(StreamChecksum, SameBytesInAnyPiecesGiveOneDigestAndAnyChangeAnother) {
  std::mt19937 rng(4);
  std::string bytes(1000, '\0');
  for (auto& c : bytes) c = static_cast<char>(rng());
  StreamChecksum whole;
  whole.update(bytes.data(), bytes.size());
  for (const size_t piece : {1, 3, 7, 8, 9, 64, 999}) {
    StreamChecksum pieces;
    for (size_t at = 0; at < bytes.size(); at += piece) pieces.update(bytes.data() + at, std::min(piece, bytes.size() - at));
    EXPECT_EQ(pieces.digest(), whole.digest()) << piece;
  }
  auto digest_of = [](const std::string& text) {
    StreamChecksum c;
    c.update(text.data(), text.size());
    return c.digest();
  };
  for (size_t i = 0; i < bytes.size(); i += 97) {  // one bit anywhere
    auto flipped = bytes;
    flipped[i] ^= 1;
    EXPECT_NE(digest_of(flipped), whole.digest()) << i;
  }
  EXPECT_NE(digest_of(bytes + std::string(1, '\0')), whole.digest());  // the length counts
  EXPECT_NE(digest_of("ab"), digest_of("ba"));
  EXPECT_NE(digest_of(""), digest_of(std::string(1, '\0')));
  // An empty tensor's bytes arrive as (nullptr, 0), between other pieces; the sanitize build
  // would stop on a memcpy from a null pointer.
  StreamChecksum with_empty_pieces;
  with_empty_pieces.update(bytes.data(), 5);
  with_empty_pieces.update(nullptr, 0);
  with_empty_pieces.update(bytes.data() + 5, bytes.size() - 5);
  with_empty_pieces.update(nullptr, 0);
  EXPECT_EQ(with_empty_pieces.digest(), whole.digest());
}

TEST(Files, AtomicWritesLeaveNoTemporaryFileAndQuotedPathsStayOneWord) {
  moelab::testing::TempDir dir;
  const auto path = dir.file("a.txt");
  write_file_atomically(path, "one");
  write_file_atomically(path, "two");
  EXPECT_EQ(read_text_file(path), "two");
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) ++entries, (void)entry;
  EXPECT_EQ(entries, 1);
  EXPECT_NE(unique_temp_path(path), unique_temp_path(path));
  EXPECT_THROW(write_file_atomically(dir.file("no/such/dir/b.txt"), "x"), Error);

  const std::string awkward = "it's a $(touch no) `x` \"y\" \\ path";
  EXPECT_EQ(command_output("printf %s " + shell_quote(awkward)), awkward);
  EXPECT_FALSE(std::filesystem::exists("no"));
}
