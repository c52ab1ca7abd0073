FROM alpine
COPY <<one.txt <<"two.txt" /files/
hello $USER
one.txt
literal $USER
two.txt
COPY --chmod=0755 <<-EOF /usr/local/bin/run
	#!/bin/sh
	exec "$@"
	EOF
