FROM alpine
RUN echo ÿþ done
