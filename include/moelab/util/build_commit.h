// Which commit this binary was built from, so that a run's summary and a sweep's manifest name the
// code that produced them (the checkout's HEAD when a sweep starts may be a later commit than the
// binary that runs it).
#pragma once

namespace moelab {

// The full hash of the checkout's HEAD at build time, with "-dirty" when tracked files had
// uncommitted changes; "unknown" when built outside a git checkout.
const char* build_commit();

}  // namespace moelab
