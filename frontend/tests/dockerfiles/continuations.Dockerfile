FROM alpine
RUN apk add \
      curl \
# a comment inside a continuation is dropped
      git \

      make
RUN echo hello\
world
RUN echo keep \\
RUN echo "trailing spaces" \   
    after
LABEL a=b \
