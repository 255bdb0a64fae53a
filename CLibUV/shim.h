// The only C header the UV target sees: libuv itself (Debian: libuv1-dev).
#ifndef DATASTREAM_CLIBUV_SHIM_H
#define DATASTREAM_CLIBUV_SHIM_H
#include <uv.h>
#include <sys/socket.h>
#include <netinet/in.h>
#endif
