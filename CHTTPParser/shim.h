// Debian's libhttp-parser-dev (nodejs/http-parser 2.9): the HTTP/1.1 request parser.
#include <http_parser.h>
