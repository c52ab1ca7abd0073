FROM alpine
COPY -- --odd-name /dest
RUN --network=host -- echo "flags end here"
