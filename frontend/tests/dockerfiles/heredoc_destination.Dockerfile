FROM alpine
COPY a.txt <<EOF
EOF
