FROM alpine
RUN <<EOF
set -e
echo "$HOME"
EOF
RUN <<-'SCRIPT' bash
	echo 'no $expansion here'
	SCRIPT
RUN 3<<A cat /dev/fd/3 && cat <<"B"
first
A
second
B
RUN ["<<EOF"]
RUN echo "<<NOT"
