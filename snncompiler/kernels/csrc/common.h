// Helpers shared by the C++ extensions (lif_cpu.cpp, event_cpu.cpp): each includes this header,
// and setup.py lists it in both extensions' `depends` so that editing it rebuilds both.
// No torch or pybind11 types here; everything is inline, so each extension keeps its own copy.
#pragma once

#include <cstdint>

namespace snnc {

// Python hands in tensor.data_ptr() of contiguous buffers it checked; 0 means "absent".
template <class T>
inline T* addr(uintptr_t a) {
  return reinterpret_cast<T*>(a);
}

// Whether this extension was compiled with OpenMP (setup.py retries without it where the
// compiler has none, e.g. Apple clang): `snnc env` and the tests ask each extension.
inline bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace snnc
