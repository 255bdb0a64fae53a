// Debian's libwslay-dev (wslay 1.1): the WebSocket frame codec (RFC 6455).
#include <wslay/wslay.h>
