// Precompiled header: LibTorch's umbrella header dominates compile time on 2 cores.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>
