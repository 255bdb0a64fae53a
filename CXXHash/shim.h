// xxHash (Debian: libxxhash-dev), used for the XXH3-128 upload digest.
#ifndef DATASTREAM_CXXHASH_SHIM_H
#define DATASTREAM_CXXHASH_SHIM_H
#include <xxhash.h>
#endif
