# A comment ends the directives, so this is a comment too:
# escape=`
FROM alpine
RUN echo a \
    b
